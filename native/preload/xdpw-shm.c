/*
 * LD_PRELOAD for xdg-desktop-portal-wlr 0.7.0 on our headless sway (wlroots 0.15). Two fixes, both in
 * how xdpw drives wlr-screencopy; nothing else passes through here.
 *
 * 1. Shared memory without a GPU (sway headless, pixman). xdpw 0.7.0 talks screencopy v3 and, before
 * it starts a cast, insists on having seen both a `buffer` (shm) and a `linux_dmabuf` event for the
 * first frame (start_screencast(): "unable to receive a valid format from wlr_screencopy"; upstream
 * xdpw issue 289). The pixman renderer never sends `linux_dmabuf`, so ScreenCast.Start answers 2. We
 * wrap the listener xdpw installs on each zwlr_screencopy_frame_v1 and, right after every `buffer`
 * event, deliver a synthetic `linux_dmabuf` event with the same format and size. xdpw then tries to
 * build a DMA-BUF modifier list, finds no GBM device / no modifiers, and offers PipeWire shared-memory
 * (MemFd) buffers only, which is what the compositor can actually fill. With a real GPU the
 * compositor's own linux_dmabuf event arrives later and simply overwrites ours.
 *
 * 2. Every cast gets the current picture at once. xdpw asks for every frame with `copy_with_damage`,
 * which wlroots answers only once the output has damage *for this client* since the client's last
 * frame; wlroots keeps that damage per screencopy manager binding (one per xdpw process), not per
 * cast. The first cast of an xdpw process starts from full damage, but every later cast on a screen
 * that has not changed since the previous cast's last frame waits for the next change: a static
 * desktop sends the new cast nothing at all (a viewer coming back after capture closed saw a black
 * picture until something moved). So the frames a new cast (a new PipeWire stream of xdpw's) copies
 * during its first PLAIN_COPIES_NS are requested with plain `copy`, which wlroots answers at the next
 * output commit (the copy request schedules one), and we report the whole output as their damage
 * (plain copy sends no damage event, and xdpw would otherwise put the previous frame's damage on the
 * buffer). More than one, because the first buffer of a new PipeWire stream can be lost (below).
 * Later frames stay `copy_with_damage`: a still screen still costs nothing.
 *
 * 3. A cast whose consumer left lets go of its pending frame. xdpw keeps the frame it asked for after
 * its PipeWire consumer left, and destroys the cast only when that frame completes. On a still screen
 * that is never (until WirePlumber suspends the node, 5 s later), and meanwhile the old frame is first
 * in wlroots' list: the next change is copied into it and the damage cleared, so a new cast (a viewer
 * who came back) missed that change until another one came. When xdpw's stream leaves "streaming",
 * its pending frame gets a `failed` event, from xdpw's own PipeWire loop (an event source, never
 * inside the stream's callback: xdpw may destroy the stream in its handler). xdpw's state machine
 * handles it as a frame that ended while paused; a stream that resumes starts with plain copies (2.).
 *
 * How: xdpw calls the inline zwlr_screencopy_*() helpers, i.e. libwayland-client's
 * wl_proxy_add_listener() and wl_proxy_marshal_flags(), and libpipewire's pw_stream_add_listener(),
 * through the PLT, so interposing those symbols is enough. Only proxies whose class is
 * "zwlr_screencopy_frame_v1", and the state_changed event of xdpw's streams, are changed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wayland-util.h> /* struct wl_interface, wl_message, union wl_argument: types only */
#include <pipewire/pipewire.h> /* types and inline helpers; the functions are looked up at run time */

struct wl_proxy;

/* Same layout as the generated struct zwlr_screencopy_frame_v1_listener (event order of
 * wlr-screencopy-unstable-v1.xml, version 3). Debian ships no header for it (no wlr-protocols). */
struct frame_listener {
	void (*buffer)(void *data, struct wl_proxy *frame, uint32_t format, uint32_t width, uint32_t height,
		uint32_t stride);
	void (*flags)(void *data, struct wl_proxy *frame, uint32_t flags);
	void (*ready)(void *data, struct wl_proxy *frame, uint32_t sec_hi, uint32_t sec_lo, uint32_t nsec);
	void (*failed)(void *data, struct wl_proxy *frame);
	void (*damage)(void *data, struct wl_proxy *frame, uint32_t x, uint32_t y, uint32_t w, uint32_t h);
	void (*linux_dmabuf)(void *data, struct wl_proxy *frame, uint32_t format, uint32_t width, uint32_t height);
	void (*buffer_done)(void *data, struct wl_proxy *frame);
};

/* Request opcodes of zwlr_screencopy_frame_v1 (same XML). */
enum { FRAME_COPY = 0, FRAME_DESTROY = 1, FRAME_COPY_WITH_DAMAGE = 2 };

/* libwayland's WL_CLOSURE_MAX_ARGS: no request has more arguments. */
#define MAX_ARGS 20

static const char FRAME_CLASS[] = "zwlr_screencopy_frame_v1";

/* Looked up lazily (not linked): the preload also ends up in processes without libwayland, e.g. the
 * exec wrapper that starts xdpw, and must load there without unresolved symbols. */
static struct {
	int (*add_listener)(struct wl_proxy *, void (**)(void), void *);
	const char *(*get_class)(struct wl_proxy *);
	void *(*get_user_data)(struct wl_proxy *);
	struct wl_proxy *(*marshal_array_flags)(struct wl_proxy *, uint32_t, const struct wl_interface *, uint32_t,
		uint32_t, union wl_argument *);
} wl;

static struct {
	void (*add_listener)(struct pw_stream *, struct spa_hook *, const struct pw_stream_events *, void *);
	struct pw_core *(*get_core)(struct pw_stream *);
	struct pw_context *(*get_context)(struct pw_core *);
	struct pw_loop *(*get_main_loop)(struct pw_context *);
} pw;

static void *need(const char *name) {
	void *f = dlsym(RTLD_NEXT, name);
	if (!f) {
		fprintf(stderr, "wl-xdpw-shm: symbol %s (libwayland-client or libpipewire) not found: %s\n", name, dlerror());
		abort();
	}
	return f;
}

static void resolve_pw(void) {
	if (pw.add_listener) return;
	pw.get_core = need("pw_stream_get_core");
	pw.get_context = need("pw_core_get_context");
	pw.get_main_loop = need("pw_context_get_main_loop");
	pw.add_listener = need("pw_stream_add_listener");
}

static void resolve(void) {
	if (wl.marshal_array_flags) return;
	wl.add_listener = need("wl_proxy_add_listener");
	wl.get_class = need("wl_proxy_get_class");
	wl.get_user_data = need("wl_proxy_get_user_data");
	wl.marshal_array_flags = need("wl_proxy_marshal_array_flags");
}

/* xdpw installs one static listener table for every frame, so one saved pointer is enough. A frame
 * that arrives with a different table is passed through unwrapped (and said so on stderr) rather than
 * dispatched to the wrong callbacks. The Wayland event loop runs on one thread. */
static const struct frame_listener *orig_listener;

/* What we know of one cast, keyed by the listener data xdpw gives every frame of it (its screencast
 * instance). xdpw has at most one frame per cast at a time. We never learn when a cast ends, so the
 * table keeps the most recently used casts (32; the agent has one at a time); one forgotten and seen
 * again starts `fresh`, which costs PLAIN_COPIES_NS of full frames. */
struct cast_state {
	void *cast;
	uint64_t used;
	int fresh;                     /* its next copy starts a run of plain copies (see 2. above) */
	uint64_t plain_until_ns;       /* copies before this time are plain copies */
	struct wl_proxy *full_frame;   /* the frame asked with plain copy: its `ready` gets full damage first */
	struct wl_proxy *pending;      /* the frame asked to copy, not yet ready or failed */
	int stopped;                   /* its stream left "streaming" with `pending` (see 3. above) */
	uint32_t width, height;        /* from the cast's last `buffer` event */
};
#define MAX_CASTS 32
static struct cast_state casts[MAX_CASTS];
static uint64_t use_clock;

static struct cast_state *cast_state(void *cast, int create) {
	struct cast_state *oldest = &casts[0];
	for (int i = 0; i < MAX_CASTS; i++) {
		if (casts[i].used != 0 && casts[i].cast == cast) {
			casts[i].used = ++use_clock;
			return &casts[i];
		}
		if (casts[i].used < oldest->used) oldest = &casts[i];
	}
	if (!create) return NULL;
	memset(oldest, 0, sizeof(*oldest));
	oldest->cast = cast;
	oldest->used = ++use_clock;
	oldest->fresh = 1;
	return oldest;
}

/* How long a cast's frames stay plain copies after its first: its first buffer can be lost. xdpw queues
 * it within a millisecond of its PipeWire stream starting, and in about 1 start in 20 (under load) the
 * consumer never saw it, although it was already streaming; on a still screen nothing else ever came.
 * The frames after it, at xdpw's frame rate, arrive. */
#define PLAIN_COPIES_NS (250ull * 1000 * 1000)

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* wl_shm formats 0 and 1 are the only ones that differ from their DRM fourcc. */
static uint32_t drm_from_shm(uint32_t shm) {
	if (shm == 0) return 0x34325241; /* DRM_FORMAT_ARGB8888 'AR24' */
	if (shm == 1) return 0x34325258; /* DRM_FORMAT_XRGB8888 'XR24' */
	return shm;
}

static void w_buffer(void *data, struct wl_proxy *frame, uint32_t format, uint32_t width, uint32_t height,
		uint32_t stride) {
	struct cast_state *s = cast_state(data, 0);
	if (s) {
		s->width = width;
		s->height = height;
	}
	if (orig_listener->buffer) orig_listener->buffer(data, frame, format, width, height, stride);
	if (orig_listener->linux_dmabuf) orig_listener->linux_dmabuf(data, frame, drm_from_shm(format), width, height);
}
static void w_flags(void *data, struct wl_proxy *frame, uint32_t flags) {
	if (orig_listener->flags) orig_listener->flags(data, frame, flags);
}
static void w_ready(void *data, struct wl_proxy *frame, uint32_t a, uint32_t b, uint32_t c) {
	struct cast_state *s = cast_state(data, 0);
	if (s && s->pending == frame) s->pending = NULL;
	if (s && s->full_frame == frame) {
		/* A plain copy: the whole output, and no damage event of its own. */
		s->full_frame = NULL;
		if (orig_listener->damage && s->width && s->height) orig_listener->damage(data, frame, 0, 0, s->width, s->height);
	}
	if (orig_listener->ready) orig_listener->ready(data, frame, a, b, c);
}
static void w_failed(void *data, struct wl_proxy *frame) {
	struct cast_state *s = cast_state(data, 0);
	if (s && s->pending == frame) s->pending = NULL;
	if (s && s->full_frame == frame) {
		s->full_frame = NULL;
		s->fresh = 1; /* the cast still has no full picture */
	}
	if (orig_listener->failed) orig_listener->failed(data, frame);
}
static void w_damage(void *data, struct wl_proxy *frame, uint32_t x, uint32_t y, uint32_t w, uint32_t h) {
	if (orig_listener->damage) orig_listener->damage(data, frame, x, y, w, h);
}
static void w_linux_dmabuf(void *data, struct wl_proxy *frame, uint32_t format, uint32_t width, uint32_t height) {
	if (orig_listener->linux_dmabuf) orig_listener->linux_dmabuf(data, frame, format, width, height);
}
static void w_buffer_done(void *data, struct wl_proxy *frame) {
	if (orig_listener->buffer_done) orig_listener->buffer_done(data, frame);
}

static const struct frame_listener wrapped = {
	.buffer = w_buffer,
	.flags = w_flags,
	.ready = w_ready,
	.failed = w_failed,
	.damage = w_damage,
	.linux_dmabuf = w_linux_dmabuf,
	.buffer_done = w_buffer_done,
};

int wl_proxy_add_listener(struct wl_proxy *proxy, void (**implementation)(void), void *data) {
	resolve();
	const char *cls = wl.get_class(proxy);
	if (cls && strcmp(cls, FRAME_CLASS) == 0) {
		const struct frame_listener *l = (const struct frame_listener *)implementation;
		if (!orig_listener) orig_listener = l;
		if (l == orig_listener) {
			cast_state(data, 1);
			return wl.add_listener(proxy, (void (**)(void))&wrapped, data);
		}
		fprintf(stderr, "wl-xdpw-shm: second screencopy listener table, not wrapped\n");
	}
	return wl.add_listener(proxy, implementation, data);
}

/* A screencopy frame request on its way out: which opcode it really gets (see 2. above). */
static uint32_t frame_request(struct wl_proxy *frame, uint32_t opcode) {
	struct cast_state *s = cast_state(wl.get_user_data(frame), 0);
	if (!s) return opcode;
	if (opcode == FRAME_COPY || opcode == FRAME_COPY_WITH_DAMAGE) {
		s->pending = frame;
		const uint64_t now = now_ns();
		if (s->fresh) {
			s->fresh = 0;
			s->plain_until_ns = now + PLAIN_COPIES_NS;
		}
		if (opcode == FRAME_COPY_WITH_DAMAGE && now < s->plain_until_ns) {
			s->full_frame = frame;
			return FRAME_COPY;
		}
	} else if (opcode == FRAME_DESTROY) {
		if (s->full_frame == frame) s->full_frame = NULL;
		if (s->pending == frame) s->pending = NULL;
	}
	return opcode;
}

/*
 * Every request xdpw sends comes through here (the generated inline helpers call it). The variadic
 * arguments are read by the request's signature exactly as libwayland's own wl_proxy_marshal_flags()
 * does, and sent with wl_proxy_marshal_array_flags(), which is public API since libwayland 1.20.
 */
struct wl_proxy *wl_proxy_marshal_flags(struct wl_proxy *proxy, uint32_t opcode, const struct wl_interface *interface,
		uint32_t version, uint32_t flags, ...) {
	resolve();
	/* A proxy begins with its wl_object, whose first member is the interface (libwayland's private
	 * layout): checked against the public wl_proxy_get_class(), which returns that interface's name. */
	const struct wl_interface *pi = *(const struct wl_interface *const *)proxy;
	const char *cls = wl.get_class(proxy);
	if (pi == NULL || cls != pi->name || opcode >= (uint32_t)pi->method_count) {
		fprintf(stderr, "wl-xdpw-shm: unexpected wl_proxy layout or opcode %u (class %s)\n", opcode, cls ? cls : "?");
		abort();
	}
	union wl_argument args[MAX_ARGS];
	int n = 0;
	va_list ap;
	va_start(ap, flags);
	for (const char *c = pi->methods[opcode].signature; *c; c++) {
		if (*c == '?' || (*c >= '0' && *c <= '9')) continue; /* nullable mark, since-version */
		if (n == MAX_ARGS) {
			fprintf(stderr, "wl-xdpw-shm: %s.%s has too many arguments\n", cls, pi->methods[opcode].name);
			abort();
		}
		switch (*c) {
		case 'i': args[n++].i = va_arg(ap, int32_t); break;
		case 'u': args[n++].u = va_arg(ap, uint32_t); break;
		case 'f': args[n++].f = va_arg(ap, wl_fixed_t); break;
		case 's': args[n++].s = va_arg(ap, const char *); break;
		case 'o':
		case 'n': args[n++].o = va_arg(ap, struct wl_object *); break;
		case 'a': args[n++].a = va_arg(ap, struct wl_array *); break;
		case 'h': args[n++].h = va_arg(ap, int32_t); break;
		default:
			fprintf(stderr, "wl-xdpw-shm: unknown argument type '%c' in %s.%s\n", *c, cls, pi->methods[opcode].name);
			abort();
		}
	}
	va_end(ap);
	if (strcmp(cls, FRAME_CLASS) == 0) opcode = frame_request(proxy, opcode);
	return wl.marshal_array_flags(proxy, opcode, interface, version, flags, args);
}

/* xdpw installs one static stream event table for every cast (like its frame listener). */
static const struct pw_stream_events *orig_stream_events;
static struct pw_stream_events wrapped_stream_events;
/* Fails the pending frames of stopped casts, from xdpw's PipeWire loop (see 3. above). */
static struct pw_loop *deferred_loop;
static struct spa_source *deferred_event;

static void fail_stopped_frames(void *data, uint64_t count) {
	(void)data;
	(void)count;
	for (int i = 0; i < MAX_CASTS; i++) {
		struct cast_state *s = &casts[i];
		if (s->used == 0 || !s->stopped) continue;
		s->stopped = 0;
		struct wl_proxy *frame = s->pending;
		if (frame == NULL) continue;
		/* Its picture never reached the consumer: a stream that resumes starts with plain copies. */
		s->fresh = 1;
		w_failed(s->cast, frame); /* xdpw ends the frame; this entry may be reused from here on */
	}
}

static void w_stream_state_changed(void *data, enum pw_stream_state old, enum pw_stream_state state, const char *error) {
	if (orig_stream_events->state_changed) orig_stream_events->state_changed(data, old, state, error);
	struct cast_state *s = cast_state(data, 0);
	if (s == NULL) return;
	if (state == PW_STREAM_STATE_PAUSED && old == PW_STREAM_STATE_STREAMING) {
		/* The consumer left (or a renegotiation pauses the stream: then "streaming" may come first). */
		if (s->pending == NULL || deferred_event == NULL) return;
		s->stopped = 1;
		pw_loop_signal_event(deferred_loop, deferred_event);
	} else {
		/* Streaming again, or the stream is going away with its cast: its frame is xdpw's business. */
		s->stopped = 0;
	}
}

void pw_stream_add_listener(struct pw_stream *stream, struct spa_hook *listener, const struct pw_stream_events *events,
		void *data) {
	resolve_pw();
	if (!orig_stream_events) {
		orig_stream_events = events;
		wrapped_stream_events = *events;
		wrapped_stream_events.state_changed = w_stream_state_changed;
	}
	if (events != orig_stream_events) {
		fprintf(stderr, "wl-xdpw-shm: second stream event table, not wrapped\n");
		pw.add_listener(stream, listener, events, data);
		return;
	}
	if (deferred_event == NULL) {
		/* xdpw runs one PipeWire loop for all its streams: the source lives as long as the process. */
		deferred_loop = pw.get_main_loop(pw.get_context(pw.get_core(stream)));
		deferred_event = pw_loop_add_event(deferred_loop, fail_stopped_frames, NULL);
		if (deferred_event == NULL) fprintf(stderr, "wl-xdpw-shm: no event source on xdpw's PipeWire loop: fix 3 is off\n");
	}
	/* A new stream: a new cast (or a cast at the address of a destroyed one). Its first frames are
	 * plain copies (2. above). */
	struct cast_state *s = cast_state(data, 1);
	s->fresh = 1;
	s->pending = NULL;
	s->full_frame = NULL;
	s->stopped = 0;
	pw.add_listener(stream, listener, &wrapped_stream_events, data);
}
