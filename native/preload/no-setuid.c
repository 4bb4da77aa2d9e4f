/*
 * LD_PRELOAD for sway 1.7 running as root.
 *
 * Why: sway's drop_permissions() refuses to start when setuid(0)/setgid(0) still succeed after it
 * "dropped" root ("Unable to drop root ... refusing to start"). As root they always succeed, so sway
 * cannot run as root at all. Making setuid/setgid (and their set*id relatives) fail with EPERM lets it
 * start; sway keeps running as root, which is what the agent's headless desktop wants on a machine
 * without a second user. Nothing else in sway changes identity.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/types.h>
#include <unistd.h>

/* LD_PRELOAD stays in the environment on purpose: the preload reaches sway through an exec wrapper
 * (wl-pdeathsig-exec), so unsetting it in a constructor would drop it before sway runs. Processes sway
 * itself spawns (none in the agent's config) would inherit it, which only makes their set*id fail. */

int setuid(uid_t uid) { (void)uid; errno = EPERM; return -1; }
int setgid(gid_t gid) { (void)gid; errno = EPERM; return -1; }
int seteuid(uid_t uid) { (void)uid; errno = EPERM; return -1; }
int setegid(gid_t gid) { (void)gid; errno = EPERM; return -1; }
int setreuid(uid_t r, uid_t e) { (void)r; (void)e; errno = EPERM; return -1; }
int setregid(gid_t r, gid_t e) { (void)r; (void)e; errno = EPERM; return -1; }
int setresuid(uid_t r, uid_t e, uid_t s) { (void)r; (void)e; (void)s; errno = EPERM; return -1; }
int setresgid(gid_t r, gid_t e, gid_t s) { (void)r; (void)e; (void)s; errno = EPERM; return -1; }
