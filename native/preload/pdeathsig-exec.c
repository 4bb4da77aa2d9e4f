/*
 * wl-pdeathsig-exec [-p PARENT_PID] [-s SIGNAL] [--] PROGRAM [ARGS...]
 *
 * Execs PROGRAM after asking the kernel to send it SIGNAL (default SIGTERM) when its parent dies
 * (prctl PR_SET_PDEATHSIG; the setting survives execve of a non-setuid program). Why: the headless
 * desktop's parts (dbus-daemon, pipewire, sway, the portals) must not outlive the agent even when the
 * agent is SIGKILLed or crashes and cannot run its close().
 *
 * -p: the pid the parent is expected to have. If the parent already died between fork and prctl, we
 * have been reparented (to init or a subreaper) and the death signal would never come: exit instead.
 * Without -p the pid seen at startup is used, which only narrows (not closes) that window; the agent
 * always passes -p. Note PR_SET_PDEATHSIG follows the parent *thread*: Node spawns from its main
 * thread, which lives as long as the process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static void usage(void) {
	fprintf(stderr, "usage: wl-pdeathsig-exec [-p PARENT_PID] [-s SIGNAL] [--] PROGRAM [ARGS...]\n");
	exit(127);
}

static int parse_signal(const char *s) {
	if (strcmp(s, "TERM") == 0 || strcmp(s, "SIGTERM") == 0) return SIGTERM;
	if (strcmp(s, "KILL") == 0 || strcmp(s, "SIGKILL") == 0) return SIGKILL;
	if (strcmp(s, "INT") == 0 || strcmp(s, "SIGINT") == 0) return SIGINT;
	if (strcmp(s, "HUP") == 0 || strcmp(s, "SIGHUP") == 0) return SIGHUP;
	char *end;
	long n = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || n <= 0 || n >= NSIG) return -1;
	return (int)n;
}

int main(int argc, char **argv) {
	pid_t parent = getppid();
	int sig = SIGTERM;
	int i = 1;
	for (; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) { i++; break; }
		if (strcmp(argv[i], "-p") == 0 && i + 1 < argc) {
			char *end;
			long p = strtol(argv[++i], &end, 10);
			if (*end != '\0' || p <= 0) usage();
			parent = (pid_t)p;
		} else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
			sig = parse_signal(argv[++i]);
			if (sig < 0) usage();
		} else if (argv[i][0] == '-') {
			usage();
		} else {
			break;
		}
	}
	if (i >= argc) usage();

	if (prctl(PR_SET_PDEATHSIG, sig) != 0) {
		fprintf(stderr, "wl-pdeathsig-exec: prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
		return 127;
	}
	/* Checked after prctl: from here on a parent death is either seen here or signalled. */
	if (getppid() != parent) {
		fprintf(stderr, "wl-pdeathsig-exec: parent %d is gone, not starting %s\n", (int)parent, argv[i]);
		return 127;
	}
	execvp(argv[i], &argv[i]);
	fprintf(stderr, "wl-pdeathsig-exec: cannot run %s: %s\n", argv[i], strerror(errno));
	return 127;
}
