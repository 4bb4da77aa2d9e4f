/*
 * LD_PRELOAD for xdg-desktop-portal-wlr 0.7.0 on a compositor without a GPU (sway headless, pixman).
 *
 * Why: xdpw 0.7.0 talks screencopy v3 and, before it starts a cast, insists on having seen both a
 * `buffer` (shm) and a `linux_dmabuf` event for the first frame (start_screencast(): "unable to receive
 * a valid format from wlr_screencopy"; upstream xdpw issue 289). The pixman renderer never sends
 * `linux_dmabuf`, so ScreenCast.Start answers 2. We wrap the listener xdpw installs on each
 * zwlr_screencopy_frame_v1 and, right after every `buffer` event, deliver a synthetic `linux_dmabuf`
 * event with the same format and size. xdpw then tries to build a DMA-BUF modifier list, finds no GBM
 * device / no modifiers, and offers PipeWire shared-memory (MemFd) buffers only, which is what the
 * compositor can actually fill. With a real GPU the compositor's own linux_dmabuf event arrives later and
 * simply overwrites ours.
 *
 * How: xdpw calls the inline zwlr_screencopy_frame_v1_add_listener(), i.e. libwayland-client's
 * wl_proxy_add_listener(), through the PLT, so interposing that one symbol is enough. Only proxies whose
 * class is "zwlr_screencopy_frame_v1" are touched; everything else passes straight through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

typedef int (*add_listener_fn)(struct wl_proxy *, void (**)(void), void *);
typedef const char *(*get_class_fn)(struct wl_proxy *);

/* xdpw installs one static listener table for every frame, so one saved pointer is enough. A frame
 * that arrives with a different table is passed through unwrapped (and said so on stderr) rather than
 * dispatched to the wrong callbacks. The Wayland event loop runs on one thread. */
static const struct frame_listener *orig_listener;

/* wl_shm formats 0 and 1 are the only ones that differ from their DRM fourcc. */
static uint32_t drm_from_shm(uint32_t shm) {
	if (shm == 0) return 0x34325241; /* DRM_FORMAT_ARGB8888 'AR24' */
	if (shm == 1) return 0x34325258; /* DRM_FORMAT_XRGB8888 'XR24' */
	return shm;
}

static void w_buffer(void *data, struct wl_proxy *frame, uint32_t format, uint32_t width, uint32_t height,
		uint32_t stride) {
	if (orig_listener->buffer) orig_listener->buffer(data, frame, format, width, height, stride);
	if (orig_listener->linux_dmabuf) orig_listener->linux_dmabuf(data, frame, drm_from_shm(format), width, height);
}
static void w_flags(void *data, struct wl_proxy *frame, uint32_t flags) {
	if (orig_listener->flags) orig_listener->flags(data, frame, flags);
}
static void w_ready(void *data, struct wl_proxy *frame, uint32_t a, uint32_t b, uint32_t c) {
	if (orig_listener->ready) orig_listener->ready(data, frame, a, b, c);
}
static void w_failed(void *data, struct wl_proxy *frame) {
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
	/* Looked up lazily (not linked): the preload also ends up in processes without libwayland, e.g.
	 * the exec wrapper that starts xdpw, and must load there without unresolved symbols. */
	static add_listener_fn real;
	static get_class_fn get_class;
	if (!real) {
		real = (add_listener_fn)dlsym(RTLD_NEXT, "wl_proxy_add_listener");
		get_class = (get_class_fn)dlsym(RTLD_NEXT, "wl_proxy_get_class");
		if (!real || !get_class) {
			fprintf(stderr, "wl-xdpw-shm: libwayland-client symbols not found: %s\n", dlerror());
			abort();
		}
	}
	const char *cls = get_class(proxy);
	if (cls && strcmp(cls, "zwlr_screencopy_frame_v1") == 0) {
		const struct frame_listener *l = (const struct frame_listener *)implementation;
		if (!orig_listener) orig_listener = l;
		if (l == orig_listener) return real(proxy, (void (**)(void))&wrapped, data);
		fprintf(stderr, "wl-xdpw-shm: second screencopy listener table, not wrapped\n");
	}
	return real(proxy, implementation, data);
}
