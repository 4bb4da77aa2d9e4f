/*
 * A persistent virtual pointer on a wlroots compositor (zwlr_virtual_pointer_manager_v1, version 1), for
 * tests: it gives the headless seat a pointer (sway shows no cursor on a seat without one) and moves it.
 * The two interfaces are declared here by hand from the protocol's message list (no wayland-scanner, no
 * protocol XML needed). stdin: "move X Y" (output pixels) -> absolute motion + frame, answers "ok".
 * argv: output width, height (the extent of absolute motion).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wayland-client.h>

extern const struct wl_interface vp_interface;
static const struct wl_interface *types[] = {NULL, NULL, NULL, NULL, NULL, &wl_seat_interface, &vp_interface};
/* Request opcodes follow the protocol's order: motion 0, motion_absolute 1, ..., frame 4, destroy 8. */
static const struct wl_message vp_requests[] = {
    {"motion", "uff", types}, {"motion_absolute", "uuuuu", types}, {"button", "uuu", types},
    {"axis", "uuf", types}, {"frame", "", types}, {"axis_source", "u", types},
    {"axis_stop", "uu", types}, {"axis_discrete", "uufi", types}, {"destroy", "", types},
};
const struct wl_interface vp_interface = {"zwlr_virtual_pointer_v1", 1, 9, vp_requests, 0, NULL};
static const struct wl_message vpm_requests[] = {{"create_virtual_pointer", "?on", types + 5}};
static const struct wl_interface vpm_interface = {"zwlr_virtual_pointer_manager_v1", 1, 1, vpm_requests, 0, NULL};

static struct wl_proxy *manager;
static struct wl_seat *seat;

static void global(void *data, struct wl_registry *reg, uint32_t name, const char *iface, uint32_t version) {
  (void)data;
  (void)version;
  if (strcmp(iface, "zwlr_virtual_pointer_manager_v1") == 0) manager = wl_registry_bind(reg, name, &vpm_interface, 1);
  else if (strcmp(iface, "wl_seat") == 0 && seat == NULL) seat = wl_registry_bind(reg, name, &wl_seat_interface, 1);
}
static void global_remove(void *data, struct wl_registry *reg, uint32_t name) {
  (void)data;
  (void)reg;
  (void)name;
}
static const struct wl_registry_listener listener = {global, global_remove};

static uint32_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint32_t)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: vpointer WIDTH HEIGHT\n");
    return 2;
  }
  uint32_t w = (uint32_t)atoi(argv[1]), h = (uint32_t)atoi(argv[2]);
  struct wl_display *d = wl_display_connect(NULL);
  if (d == NULL) {
    fprintf(stderr, "vpointer: cannot connect to the Wayland display\n");
    return 1;
  }
  struct wl_registry *reg = wl_display_get_registry(d);
  wl_registry_add_listener(reg, &listener, NULL);
  wl_display_roundtrip(d);
  if (manager == NULL) {
    fprintf(stderr, "vpointer: the compositor has no zwlr_virtual_pointer_manager_v1\n");
    return 1;
  }
  struct wl_proxy *ptr = wl_proxy_marshal_flags(manager, 0, &vp_interface, 1, 0, seat, NULL);
  wl_display_roundtrip(d);
  printf("ready\n");
  fflush(stdout);
  char line[128];
  while (fgets(line, sizeof line, stdin) != NULL) {
    unsigned x, y;
    if (sscanf(line, "move %u %u", &x, &y) == 2) {
      wl_proxy_marshal_flags(ptr, 1, NULL, 1, 0, now_ms(), x, y, w, h);
      wl_proxy_marshal_flags(ptr, 4, NULL, 1, 0);
      if (wl_display_roundtrip(d) < 0) return 1;
      printf("ok\n");
    } else {
      printf("error: expected \"move X Y\"\n");
    }
    fflush(stdout);
  }
  wl_proxy_marshal_flags(ptr, 8, NULL, 1, WL_MARSHAL_FLAG_DESTROY);
  wl_display_roundtrip(d);
  wl_display_disconnect(d);
  return 0;
}
