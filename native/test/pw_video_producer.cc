// A real PipeWire video source for the capture integration test (test/capture/pipewire.test.ts).
// It drives its own graph at --fps, sends BGRx shared-memory frames whose content changes only when
// told to, and optionally fills SPA_META_VideoDamage like xdg-desktop-portal-wlr does.
//
//   pw_video_producer [--width W] [--height H] [--fps N] [--damage] [--memfd]
// --memfd: the producer allocates its buffers itself, one memfd each (PW_STREAM_FLAG_ALLOC_BUFFERS),
// as xdg-desktop-portal-wlr does; the consumer then sees SPA_DATA_MemFd buffers (and can hold them
// without copying). Without it PipeWire allocates them and the consumer sees SPA_DATA_MemPtr.
// stdin, one command per line (applied to the next frame):
//   fill R G B | pixel X Y R G B | rect X Y W H R G B | size W H | animate on|off | cursor X Y | cursor-hide | quit
//   (cursor: SPA_META_Cursor at X,Y with an 8x8 BGRA bitmap B=10 G=20 R=30 A=40, hotspot 2,3; cursor-hide:
//   a 0x0 bitmap, as mutter hides the pointer; the next `cursor` sends the 8x8 bitmap again)
//   (animate: a 16x16 square moves 16 px right on every frame, like a clock ticking on a desktop)
// stdout: "node <id>" once the node exists, "format <w> <h>" after each negotiation, "ok <cmd>".
#include <pipewire/pipewire.h>
#include <spa/param/video/format-utils.h>
#include <spa/pod/builder.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Region {
  int x, y;
  uint32_t w, h;
};

struct Producer {
  struct pw_main_loop* loop = nullptr;
  struct pw_stream* stream = nullptr;
  struct spa_hook listener {};
  struct spa_source* timer = nullptr;
  struct spa_source* input = nullptr;
  uint32_t width = 320, height = 240, fps = 30;
  bool send_damage = false;
  bool memfd = false;
  bool printed_node = false;
  uint32_t stride = 0;
  std::vector<uint8_t> canvas;  // BGRx, width*4 per row
  std::vector<Region> damage;   // changed since the last frame sent
  bool full_damage = true;
  uint64_t seq = 0;
  bool animate = false;
  bool cursor_set = false;
  bool cursor_shape_pending = false;
  bool cursor_hide_pending = false;
  bool cursor_hidden = false;
  int cursor_x = 0, cursor_y = 0;
  uint32_t square_x = 0;
  std::string line_buf;
};

void Say(const std::string& s) {
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
}

const struct spa_pod* BuildFormat(struct spa_pod_builder* b, uint32_t w, uint32_t h, uint32_t fps) {
  struct spa_rectangle size = SPA_RECTANGLE(w, h);
  struct spa_fraction rate = SPA_FRACTION(fps, 1);
  return static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      b, SPA_TYPE_OBJECT_Format, SPA_PARAM_EnumFormat, SPA_FORMAT_mediaType, SPA_POD_Id(SPA_MEDIA_TYPE_video),
      SPA_FORMAT_mediaSubtype, SPA_POD_Id(SPA_MEDIA_SUBTYPE_raw), SPA_FORMAT_VIDEO_format, SPA_POD_Id(SPA_VIDEO_FORMAT_BGRx),
      SPA_FORMAT_VIDEO_size, SPA_POD_Rectangle(&size), SPA_FORMAT_VIDEO_framerate, SPA_POD_Fraction(&rate)));
}

void Paint(Producer* p, int x, int y, uint32_t w, uint32_t h, uint8_t r, uint8_t g, uint8_t bl) {
  if (p->canvas.empty()) return;  // not negotiated yet: nothing to draw on
  const int x0 = std::max(0, x), y0 = std::max(0, y);
  const int x1 = std::min<int>(p->width, x + static_cast<int>(w)), y1 = std::min<int>(p->height, y + static_cast<int>(h));
  if (x0 >= x1 || y0 >= y1) return;
  for (int yy = y0; yy < y1; ++yy)
    for (int xx = x0; xx < x1; ++xx) {
      uint8_t* px = p->canvas.data() + static_cast<size_t>(yy) * p->width * 4 + static_cast<size_t>(xx) * 4;
      px[0] = bl;
      px[1] = g;
      px[2] = r;
      px[3] = 0xff;
    }
  p->damage.push_back(Region{x0, y0, static_cast<uint32_t>(x1 - x0), static_cast<uint32_t>(y1 - y0)});
}

void OnProcess(void* data) {
  auto* p = static_cast<Producer*>(data);
  struct pw_buffer* b = pw_stream_dequeue_buffer(p->stream);
  if (b == nullptr) return;  // out of buffers: the consumer holds them all, skip this tick
  struct spa_buffer* buf = b->buffer;
  auto* dst = static_cast<uint8_t*>(buf->datas[0].data);
  if (dst == nullptr || p->canvas.empty()) {
    pw_stream_queue_buffer(p->stream, b);
    return;
  }
  if (p->animate && p->width >= 16 && p->height >= 16) {
    Paint(p, static_cast<int>(p->square_x), 0, 16, 16, 0x40, 0x40, 0x40);
    p->square_x = (p->square_x + 16) % (p->width - 15);
    Paint(p, static_cast<int>(p->square_x), 0, 16, 16, 0xff, static_cast<uint8_t>(p->seq), 0x00);
  }
  const uint32_t row = p->width * 4;
  for (uint32_t y = 0; y < p->height; ++y) std::memcpy(dst + static_cast<size_t>(y) * p->stride, p->canvas.data() + static_cast<size_t>(y) * row, row);
  if (auto* h = static_cast<struct spa_meta_header*>(spa_buffer_find_meta_data(buf, SPA_META_Header, sizeof(struct spa_meta_header)))) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    h->pts = SPA_TIMESPEC_TO_NSEC(&ts);
    h->flags = 0;
    h->seq = p->seq++;
    h->dts_offset = 0;
  }
  if (struct spa_meta* m = spa_buffer_find_meta(buf, SPA_META_VideoDamage)) {
    // Without --damage, or with nothing changed, the first region stays invalid ("no information").
    auto* regions = static_cast<struct spa_meta_region*>(m->data);
    const size_t n_max = m->size / sizeof(struct spa_meta_region);
    std::memset(m->data, 0, m->size);
    if (p->send_damage && !p->full_damage && !p->damage.empty()) {
      size_t i = 0;
      for (const Region& r : p->damage) {
        if (i >= n_max) break;
        regions[i++].region = SPA_REGION(r.x, r.y, r.w, r.h);
      }
    } else if (p->send_damage && p->full_damage && n_max > 0) {
      regions[0].region = SPA_REGION(0, 0, p->width, p->height);
    }
  }
  if (struct spa_meta* m = spa_buffer_find_meta(buf, SPA_META_Cursor); m != nullptr && m->size >= sizeof(struct spa_meta_cursor)) {
    auto* mc = static_cast<struct spa_meta_cursor*>(m->data);
    mc->id = p->cursor_set ? 1 : 0;  // id 0: no cursor information in this buffer
    mc->flags = 0;
    mc->position.x = p->cursor_x;
    mc->position.y = p->cursor_y;
    mc->hotspot.x = 2;
    mc->hotspot.y = 3;
    mc->bitmap_offset = 0;
    const size_t need = sizeof(struct spa_meta_cursor) + sizeof(struct spa_meta_bitmap) + 8 * 8 * 4;
    if (p->cursor_hide_pending && m->size >= sizeof(struct spa_meta_cursor) + sizeof(struct spa_meta_bitmap)) {
      mc->bitmap_offset = sizeof(struct spa_meta_cursor);
      auto* bm = SPA_PTROFF(mc, mc->bitmap_offset, struct spa_meta_bitmap);
      bm->format = SPA_VIDEO_FORMAT_BGRA;
      bm->size.width = 0;
      bm->size.height = 0;
      bm->stride = 0;
      bm->offset = sizeof(struct spa_meta_bitmap);
      p->cursor_hide_pending = false;
    } else if (p->cursor_shape_pending && m->size >= need) {
      mc->bitmap_offset = sizeof(struct spa_meta_cursor);
      auto* bm = SPA_PTROFF(mc, mc->bitmap_offset, struct spa_meta_bitmap);
      bm->format = SPA_VIDEO_FORMAT_BGRA;
      bm->size.width = 8;
      bm->size.height = 8;
      bm->stride = 8 * 4;
      bm->offset = sizeof(struct spa_meta_bitmap);
      auto* px = SPA_PTROFF(bm, bm->offset, uint8_t);
      for (int i = 0; i < 64; ++i) {
        px[i * 4 + 0] = 10;
        px[i * 4 + 1] = 20;
        px[i * 4 + 2] = 30;
        px[i * 4 + 3] = 40;
      }
      p->cursor_shape_pending = false;
    }
  }
  p->damage.clear();
  p->full_damage = false;
  buf->datas[0].chunk->offset = 0;
  buf->datas[0].chunk->size = p->stride * p->height;
  buf->datas[0].chunk->stride = static_cast<int32_t>(p->stride);
  pw_stream_queue_buffer(p->stream, b);
}

void OnTimeout(void* data, uint64_t /*expirations*/) {
  auto* p = static_cast<Producer*>(data);
  pw_stream_trigger_process(p->stream);
}

void OnStateChanged(void* data, enum pw_stream_state /*old*/, enum pw_stream_state state, const char* error) {
  auto* p = static_cast<Producer*>(data);
  if (state == PW_STREAM_STATE_ERROR) {
    std::fprintf(stderr, "producer: stream error: %s\n", error ? error : "?");
    pw_main_loop_quit(p->loop);
    return;
  }
  if (!p->printed_node && pw_stream_get_node_id(p->stream) != SPA_ID_INVALID) {
    p->printed_node = true;
    Say("node " + std::to_string(pw_stream_get_node_id(p->stream)));
  }
  struct timespec timeout {}, interval {};
  if (state == PW_STREAM_STATE_STREAMING) {
    timeout.tv_nsec = 1;
    interval.tv_nsec = 1000000000L / p->fps;
  }
  pw_loop_update_timer(pw_main_loop_get_loop(p->loop), p->timer, &timeout, &interval, false);
  if (state == PW_STREAM_STATE_STREAMING) Say("streaming");
}

void OnParamChanged(void* data, uint32_t id, const struct spa_pod* param) {
  auto* p = static_cast<Producer*>(data);
  if (id != SPA_PARAM_Format || param == nullptr) return;
  struct spa_video_info_raw raw {};
  if (spa_format_video_raw_parse(param, &raw) < 0) return;
  p->width = raw.size.width;
  p->height = raw.size.height;
  p->stride = SPA_ROUND_UP_N(p->width * 4, 4);
  p->canvas.assign(static_cast<size_t>(p->width) * 4 * p->height, 0x40);
  p->full_damage = true;
  uint8_t buffer[1024];
  struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buffer, sizeof(buffer));
  const struct spa_pod* params[4];
  const int cursor_size = static_cast<int>(sizeof(struct spa_meta_cursor) + sizeof(struct spa_meta_bitmap) + 8 * 8 * 4);
  params[0] = static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      &b, SPA_TYPE_OBJECT_ParamBuffers, SPA_PARAM_Buffers, SPA_PARAM_BUFFERS_buffers, SPA_POD_CHOICE_RANGE_Int(4, 2, 8),
      SPA_PARAM_BUFFERS_blocks, SPA_POD_Int(1), SPA_PARAM_BUFFERS_size, SPA_POD_Int(p->stride * p->height),
      SPA_PARAM_BUFFERS_stride, SPA_POD_Int(p->stride),
      SPA_PARAM_BUFFERS_dataType,
      SPA_POD_CHOICE_FLAGS_Int(p->memfd ? (1 << SPA_DATA_MemFd) : ((1 << SPA_DATA_MemFd) | (1 << SPA_DATA_MemPtr)))));
  params[1] = static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      &b, SPA_TYPE_OBJECT_ParamMeta, SPA_PARAM_Meta, SPA_PARAM_META_type, SPA_POD_Id(SPA_META_Header), SPA_PARAM_META_size,
      SPA_POD_Int(sizeof(struct spa_meta_header))));
  params[2] = static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      &b, SPA_TYPE_OBJECT_ParamMeta, SPA_PARAM_Meta, SPA_PARAM_META_type, SPA_POD_Id(SPA_META_VideoDamage), SPA_PARAM_META_size,
      SPA_POD_CHOICE_RANGE_Int(sizeof(struct spa_meta_region) * 4, sizeof(struct spa_meta_region) * 1, sizeof(struct spa_meta_region) * 16)));
  params[3] = static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      &b, SPA_TYPE_OBJECT_ParamMeta, SPA_PARAM_Meta, SPA_PARAM_META_type, SPA_POD_Id(SPA_META_Cursor), SPA_PARAM_META_size,
      SPA_POD_Int(cursor_size)));
  pw_stream_update_params(p->stream, params, 4);
  Say("format " + std::to_string(p->width) + " " + std::to_string(p->height));
}

// --memfd: one memfd per buffer, mapped read-write here; unmapped and closed when PipeWire removes it.
void OnAddBuffer(void* data, struct pw_buffer* b) {
  auto* p = static_cast<Producer*>(data);
  struct spa_data& d = b->buffer->datas[0];
  const uint32_t size = p->stride * p->height;
  const int fd = memfd_create("wl-test-producer", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, size) < 0) {
    if (fd >= 0) close(fd);
    return;
  }
  void* ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (ptr == MAP_FAILED) {
    close(fd);
    return;
  }
  d.type = SPA_DATA_MemFd;
  d.flags = SPA_DATA_FLAG_READWRITE;
  d.fd = fd;
  d.mapoffset = 0;
  d.maxsize = size;
  d.data = ptr;
}

void OnRemoveBuffer(void* /*data*/, struct pw_buffer* b) {
  struct spa_data& d = b->buffer->datas[0];
  if (d.type != SPA_DATA_MemFd || d.fd < 0) return;
  if (d.data != nullptr) munmap(d.data, d.maxsize);
  close(static_cast<int>(d.fd));
  d.fd = -1;
  d.data = nullptr;
}

void HandleCommand(Producer* p, const std::string& line) {
  std::istringstream in(line);
  std::string cmd;
  in >> cmd;
  if (cmd == "fill") {
    int r = 0, g = 0, b = 0;
    in >> r >> g >> b;
    Paint(p, 0, 0, p->width, p->height, r, g, b);
  } else if (cmd == "pixel") {
    int x = 0, y = 0, r = 0, g = 0, b = 0;
    in >> x >> y >> r >> g >> b;
    Paint(p, x, y, 1, 1, r, g, b);
  } else if (cmd == "rect") {
    int x = 0, y = 0, r = 0, g = 0, b = 0;
    uint32_t w = 0, h = 0;
    in >> x >> y >> w >> h >> r >> g >> b;
    Paint(p, x, y, w, h, r, g, b);
  } else if (cmd == "size") {
    uint32_t w = 0, h = 0;
    in >> w >> h;
    uint8_t buffer[512];
    struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buffer, sizeof(buffer));
    const struct spa_pod* params[1] = {BuildFormat(&b, w, h, p->fps)};
    pw_stream_update_params(p->stream, params, 1);  // renegotiates; OnParamChanged gets the new size
  } else if (cmd == "cursor") {
    in >> p->cursor_x >> p->cursor_y;
    if (!p->cursor_set || p->cursor_hidden) p->cursor_shape_pending = true;
    p->cursor_set = true;
    p->cursor_hidden = false;
  } else if (cmd == "cursor-hide") {
    p->cursor_hide_pending = true;
    p->cursor_hidden = true;
  } else if (cmd == "animate") {
    std::string on;
    in >> on;
    p->animate = on == "on";
  } else if (cmd == "quit") {
    pw_main_loop_quit(p->loop);
  } else {
    Say("error unknown command " + cmd);
    return;
  }
  Say("ok " + cmd);
}

void OnInput(void* data, int fd, uint32_t mask) {
  auto* p = static_cast<Producer*>(data);
  char buf[1024];
  const ssize_t n = read(fd, buf, sizeof(buf));
  if (n <= 0) {  // stdin closed: the test is gone, so are we
    pw_main_loop_quit(p->loop);
    return;
  }
  p->line_buf.append(buf, static_cast<size_t>(n));
  size_t nl;
  while ((nl = p->line_buf.find('\n')) != std::string::npos) {
    std::string line = p->line_buf.substr(0, nl);
    p->line_buf.erase(0, nl + 1);
    if (!line.empty()) HandleCommand(p, line);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Producer p;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> uint32_t { return i + 1 < argc ? static_cast<uint32_t>(std::atoi(argv[++i])) : 0; };
    if (a == "--width") p.width = next();
    else if (a == "--height") p.height = next();
    else if (a == "--fps") p.fps = std::max<uint32_t>(1, next());
    else if (a == "--damage") p.send_damage = true;
    else if (a == "--memfd") p.memfd = true;
    else {
      std::fprintf(stderr, "usage: pw_video_producer [--width W] [--height H] [--fps N] [--damage] [--memfd]\n");
      return 2;
    }
  }
  pw_init(&argc, &argv);
  p.loop = pw_main_loop_new(nullptr);
  struct pw_loop* loop = pw_main_loop_get_loop(p.loop);
  p.timer = pw_loop_add_timer(loop, OnTimeout, &p);
  p.input = pw_loop_add_io(loop, STDIN_FILENO, SPA_IO_IN | SPA_IO_HUP, false, OnInput, &p);
  static struct pw_stream_events events = [] {
    struct pw_stream_events e {};
    e.version = PW_VERSION_STREAM_EVENTS;
    e.state_changed = OnStateChanged;
    e.param_changed = OnParamChanged;
    e.process = OnProcess;
    return e;
  }();
  static struct pw_stream_events memfd_events = [] {
    struct pw_stream_events e = events;
    e.add_buffer = OnAddBuffer;
    e.remove_buffer = OnRemoveBuffer;
    return e;
  }();
  p.stream = pw_stream_new_simple(loop, "wl-webrtc-test-producer",
                                  pw_properties_new(PW_KEY_MEDIA_CLASS, "Video/Source", PW_KEY_MEDIA_TYPE, "Video",
                                                    PW_KEY_MEDIA_CATEGORY, "Source", PW_KEY_MEDIA_ROLE, "Screen", nullptr),
                                  p.memfd ? &memfd_events : &events, &p);
  uint8_t buffer[512];
  struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buffer, sizeof(buffer));
  const struct spa_pod* params[1] = {BuildFormat(&b, p.width, p.height, p.fps)};
  if (pw_stream_connect(p.stream, PW_DIRECTION_OUTPUT, PW_ID_ANY,
                        static_cast<enum pw_stream_flags>(PW_STREAM_FLAG_DRIVER | PW_STREAM_FLAG_MAP_BUFFERS |
                                                          (p.memfd ? PW_STREAM_FLAG_ALLOC_BUFFERS : 0)),
                        params, 1) < 0) {
    std::fprintf(stderr, "producer: pw_stream_connect failed\n");
    return 1;
  }
  pw_main_loop_run(p.loop);
  pw_stream_destroy(p.stream);
  pw_main_loop_destroy(p.loop);
  pw_deinit();
  return 0;
}
