// Unit tests of the DMA-BUF capture path that run without a GPU (native/src/capture/dmabuf.cc,
// native/src/encode/dmabuf_map.cc). Prints TAP; exits non-zero on failure.
//  * the PipeWire params we offer and parse (EnumFormat with/without modifiers, Buffers dataType,
//    a fixated Format), read back with SPA's own parsers;
//  * the render-node check says why there is no DMA-BUF here;
//  * DmabufPlanes owns (closes) its fds; the software fallback maps a LINEAR plane with its offset
//    and stride, and refuses tiled modifiers. A memfd stands in for the DMA-BUF fd there: it is a real
//    kernel fd that mmaps like a LINEAR DMA-BUF (DMA_BUF_IOCTL_SYNC answers ENOTTY on it, which the
//    mapper accepts only for fds that are not DMA-BUFs). No GPU is faked: nothing here imports.
#include <fcntl.h>
#include <spa/buffer/buffer.h>
#include <spa/param/buffers.h>
#include <spa/param/video/format-utils.h>
#include <spa/pod/iter.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "capture/dmabuf.h"
#include "capture/frame.h"
#include "encode/dmabuf_map.h"

extern "C" {
#include <drm_fourcc.h>
}

using namespace wl;

namespace {

struct Case {
  const char* name;
  std::function<std::string()> run;  // "" = ok, else the failure
};

#define EXPECT(cond, msg)                                                       \
  do {                                                                          \
    if (!(cond)) return std::string(msg) + " (" #cond ", line " + std::to_string(__LINE__) + ")"; \
  } while (0)

const uint32_t kShm[] = {SPA_VIDEO_FORMAT_BGRx, SPA_VIDEO_FORMAT_RGBx, SPA_VIDEO_FORMAT_BGRA};

// The modifier property of an EnumFormat: flags, choice type and values.
struct ModProp {
  bool present = false;
  uint32_t flags = 0;
  uint32_t choice = 0;
  std::vector<uint64_t> values;  // for an enum: default first, then the alternatives
};

ModProp ModifierOf(const struct spa_pod* param) {
  ModProp m;
  const struct spa_pod_prop* p = spa_pod_find_prop(param, nullptr, SPA_FORMAT_VIDEO_modifier);
  if (p == nullptr) return m;
  m.present = true;
  m.flags = p->flags;
  uint32_t n = 0;
  const struct spa_pod* v = spa_pod_get_values(&p->value, &n, &m.choice);
  for (uint32_t i = 0; i < n; ++i) m.values.push_back(static_cast<uint64_t>(static_cast<const int64_t*>(SPA_POD_BODY_CONST(v))[i]));
  return m;
}

uint32_t FormatIdOf(const struct spa_pod* param, uint32_t* n_alternatives) {
  const struct spa_pod_prop* p = spa_pod_find_prop(param, nullptr, SPA_FORMAT_VIDEO_format);
  if (p == nullptr) return 0;
  uint32_t n = 0, choice = 0;
  const struct spa_pod* v = spa_pod_get_values(&p->value, &n, &choice);
  *n_alternatives = n;
  uint32_t id = 0;
  spa_pod_get_id(v, &id);
  return id;
}

capture::DmabufOffer Offer(std::vector<uint32_t> formats, std::vector<uint64_t> mods) {
  capture::DmabufOffer o;
  o.enabled = true;
  o.device = "/dev/dri/renderD128";
  o.spa_formats = std::move(formats);
  o.modifiers = std::move(mods);
  return o;
}

int MemfdWithPicture(uint32_t w, uint32_t h, uint32_t stride, uint32_t offset, size_t total) {
  const int fd = memfd_create("dmabuf-test", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(total)) != 0) return -1;
  std::vector<uint8_t> buf(total, 0xee);
  for (uint32_t y = 0; y < h; ++y)
    for (uint32_t x = 0; x < w * 4; ++x) buf[offset + static_cast<size_t>(y) * stride + x] = static_cast<uint8_t>((x * 7 + y * 13) & 0xff);
  if (pwrite(fd, buf.data(), total, 0) != static_cast<ssize_t>(total)) return -1;
  return fd;
}

bool FdOpen(int fd) { return fcntl(fd, F_GETFD) >= 0 || errno != EBADF; }

std::vector<Case> Cases() {
  std::vector<Case> c;
  c.push_back({"DMA-BUF offer: one EnumFormat per layout with modifiers (MANDATORY|DONT_FIXATE, enum LINEAR+INVALID), the shm one last", [] {
    uint8_t buf[4096];
    struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof(buf));
    const struct spa_pod* params[8];
    const auto offer = Offer({SPA_VIDEO_FORMAT_BGRx, SPA_VIDEO_FORMAT_RGBx}, {DRM_FORMAT_MOD_LINEAR, DRM_FORMAT_MOD_INVALID});
    const uint32_t n = capture::BuildEnumFormats(&b, offer, kShm, 3, params, 8);
    EXPECT(n == 3, "3 params, got " + std::to_string(n));
    for (uint32_t i = 0; i < 2; ++i) {
      const ModProp m = ModifierOf(params[i]);
      EXPECT(m.present, "dmabuf EnumFormat has a modifier");
      EXPECT(m.flags == (SPA_POD_PROP_FLAG_MANDATORY | SPA_POD_PROP_FLAG_DONT_FIXATE), "flags " + std::to_string(m.flags));
      EXPECT(m.choice == SPA_CHOICE_Enum, "an enum choice");
      EXPECT((m.values == std::vector<uint64_t>{DRM_FORMAT_MOD_LINEAR, DRM_FORMAT_MOD_LINEAR, DRM_FORMAT_MOD_INVALID}), "default + LINEAR + INVALID");
      uint32_t alts = 0;
      EXPECT(FormatIdOf(params[i], &alts) == offer.spa_formats[i] && alts == 1, "one fixed layout per dmabuf EnumFormat");
      struct spa_video_info_raw raw {};
      EXPECT(spa_format_video_raw_parse(params[i], &raw) >= 0, "SPA parses it");
    }
    EXPECT(!ModifierOf(params[2]).present, "the shm EnumFormat has no modifier");
    uint32_t alts = 0;
    EXPECT(FormatIdOf(params[2], &alts) == SPA_VIDEO_FORMAT_BGRx && alts == 4, "shm: default + 3 layouts, got " + std::to_string(alts));
    return std::string();
  }});
  c.push_back({"implicit modifier only: MANDATORY without DONT_FIXATE (nothing to fixate), a single value", [] {
    uint8_t buf[4096];
    struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof(buf));
    const struct spa_pod* params[8];
    const uint32_t n = capture::BuildEnumFormats(&b, Offer({SPA_VIDEO_FORMAT_BGRx}, {DRM_FORMAT_MOD_INVALID}), kShm, 3, params, 8);
    EXPECT(n == 2, "2 params");
    const ModProp m = ModifierOf(params[0]);
    EXPECT(m.present && m.flags == SPA_POD_PROP_FLAG_MANDATORY && m.choice == SPA_CHOICE_None, "flags/choice");
    EXPECT(m.values.size() == 1 && m.values[0] == DRM_FORMAT_MOD_INVALID, "INVALID");
    return std::string();
  }});
  c.push_back({"no DMA-BUF offer: the shm EnumFormat only", [] {
    uint8_t buf[4096];
    struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof(buf));
    const struct spa_pod* params[8];
    capture::DmabufOffer off;
    off.reason = "no render node given";
    const uint32_t n = capture::BuildEnumFormats(&b, off, kShm, 3, params, 8);
    EXPECT(n == 1, "1 param");
    EXPECT(!ModifierOf(params[0]).present, "no modifier");
    return std::string();
  }});
  c.push_back({"Buffers param: dataType DmaBuf for a modifier format, MemFd|MemPtr otherwise", [] {
    uint8_t buf[1024];
    struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof(buf));
    for (bool dmabuf : {true, false}) {
      const struct spa_pod* p = capture::BuildBuffersParam(&b, dmabuf, 1920, 1080);
      const struct spa_pod_prop* prop = spa_pod_find_prop(p, nullptr, SPA_PARAM_BUFFERS_dataType);
      EXPECT(prop != nullptr, "a dataType property");
      uint32_t n = 0, choice = 0;
      const struct spa_pod* v = spa_pod_get_values(&prop->value, &n, &choice);
      int32_t types = 0;
      EXPECT(choice == SPA_CHOICE_Flags && n >= 1 && spa_pod_get_int(v, &types) >= 0, "a flags choice of ints");
      const int32_t want = dmabuf ? (1 << SPA_DATA_DmaBuf) : ((1 << SPA_DATA_MemFd) | (1 << SPA_DATA_MemPtr));
      EXPECT(types == want, "dataType " + std::to_string(types));
    }
    return std::string();
  }});
  c.push_back({"Buffers param: as many buffers as fit in 64 MB preferred (8 at 1080p, 4 at 1440p, 3 at 4K), any count accepted", [] {
    EXPECT(capture::CaptureBufferCount(1920, 1080) == 8, "1080p: 8");
    EXPECT(capture::CaptureBufferCount(2560, 1440) == 4, "1440p: 4");
    EXPECT(capture::CaptureBufferCount(3840, 2160) == 3, "4K: 3 (the floor)");
    EXPECT(capture::CaptureBufferCount(640, 480) == 8, "small: 8 (the cap)");
    uint8_t buf[1024];
    struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof(buf));
    const struct spa_pod* p = capture::BuildBuffersParam(&b, false, 2560, 1440);
    const struct spa_pod_prop* prop = spa_pod_find_prop(p, nullptr, SPA_PARAM_BUFFERS_buffers);
    EXPECT(prop != nullptr, "a buffers property");
    uint32_t n = 0, choice = 0;
    const struct spa_pod* v = spa_pod_get_values(&prop->value, &n, &choice);
    EXPECT(choice == SPA_CHOICE_Range && n == 3, "a range choice (default, min, max)");
    const int32_t* vals = static_cast<const int32_t*>(SPA_POD_BODY_CONST(v));
    EXPECT(vals[0] == 4 && vals[1] == 1 && vals[2] == 32, "default 4 in 1..32, got " + std::to_string(vals[0]) + " in " +
                                                             std::to_string(vals[1]) + ".." + std::to_string(vals[2]));
    return std::string();
  }});
  c.push_back({"a fixated Format with a modifier selects DMA-BUF; with DONT_FIXATE it still needs fixation; without one, shm", [] {
    uint8_t buf[2048];
    struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof(buf));
    struct spa_rectangle size = SPA_RECTANGLE(1920, 1080);
    auto build = [&](bool with_mod, uint32_t flags) {
      struct spa_pod_frame f;
      spa_pod_builder_push_object(&b, &f, SPA_TYPE_OBJECT_Format, SPA_PARAM_Format);
      spa_pod_builder_add(&b, SPA_FORMAT_mediaType, SPA_POD_Id(SPA_MEDIA_TYPE_video), SPA_FORMAT_mediaSubtype,
                          SPA_POD_Id(SPA_MEDIA_SUBTYPE_raw), SPA_FORMAT_VIDEO_format, SPA_POD_Id(SPA_VIDEO_FORMAT_BGRx),
                          SPA_FORMAT_VIDEO_size, SPA_POD_Rectangle(&size), 0);
      if (with_mod) {
        spa_pod_builder_prop(&b, SPA_FORMAT_VIDEO_modifier, flags);
        spa_pod_builder_long(&b, static_cast<int64_t>(I915_FORMAT_MOD_X_TILED));
      }
      return static_cast<const struct spa_pod*>(spa_pod_builder_pop(&b, &f));
    };
    uint64_t mod = 0;
    bool fix = true;
    const struct spa_pod* fixed = build(true, SPA_POD_PROP_FLAG_MANDATORY);
    EXPECT(capture::FormatSelectsDmabuf(fixed, &mod, &fix) && mod == I915_FORMAT_MOD_X_TILED && !fix, "fixated modifier");
    struct spa_video_info_raw raw {};
    EXPECT(spa_format_video_raw_parse(fixed, &raw) >= 0 && (raw.flags & SPA_VIDEO_FLAG_MODIFIER) && raw.modifier == I915_FORMAT_MOD_X_TILED,
           "SPA's parser agrees");
    EXPECT(capture::FormatSelectsDmabuf(build(true, SPA_POD_PROP_FLAG_MANDATORY | SPA_POD_PROP_FLAG_DONT_FIXATE), &mod, &fix) && fix,
           "DONT_FIXATE seen");
    EXPECT(!capture::FormatSelectsDmabuf(build(false, 0), &mod, &fix), "no modifier: shm");
    return std::string();
  }});
  c.push_back({"SPA layouts map to DRM fourccs (memory order vs little-endian words)", [] {
    EXPECT(capture::DrmFourccOfSpa(SPA_VIDEO_FORMAT_BGRx) == DRM_FORMAT_XRGB8888, "BGRx");
    EXPECT(capture::DrmFourccOfSpa(SPA_VIDEO_FORMAT_RGBx) == DRM_FORMAT_XBGR8888, "RGBx");
    EXPECT(capture::DrmFourccOfSpa(SPA_VIDEO_FORMAT_BGRA) == DRM_FORMAT_ARGB8888, "BGRA");
    EXPECT(capture::DrmFourccOfSpa(SPA_VIDEO_FORMAT_RGBA) == DRM_FORMAT_ABGR8888, "RGBA");
    EXPECT(capture::DrmFourccOfSpa(SPA_VIDEO_FORMAT_xRGB) == DRM_FORMAT_BGRX8888, "xRGB");
    EXPECT(capture::DrmFourccOfSpa(SPA_VIDEO_FORMAT_ABGR) == DRM_FORMAT_RGBA8888, "ABGR");
    EXPECT(capture::DrmFourccOfSpa(SPA_VIDEO_FORMAT_I420) == 0, "not RGB");
    return std::string();
  }});
  c.push_back({"the render-node check says why there is no DMA-BUF import", [] {
    const capture::DmabufOffer none = capture::ProbeDmabufImport("", {SPA_VIDEO_FORMAT_BGRx});
    EXPECT(!none.enabled && none.reason == "no render node given", none.reason);
    const char* node = "/dev/dri/renderD128";
    const capture::DmabufOffer o = capture::ProbeDmabufImport(node, {SPA_VIDEO_FORMAT_BGRx});
    if (access(node, F_OK) != 0) {
      EXPECT(!o.enabled, "enabled without a device");
      EXPECT(o.reason.find("renderD128") != std::string::npos && o.reason.find("no /dev/dri/renderD*") != std::string::npos, o.reason);
    } else {
      // A machine with a GPU: whatever libva says, an enabled offer names formats and modifiers.
      std::printf("  # %s present: %s\n", node, o.reason.c_str());
      EXPECT(!o.enabled || (!o.spa_formats.empty() && !o.modifiers.empty()), o.reason);
    }
    return std::string();
  }});
  c.push_back({"DmabufPlanes closes its (dup'ed) fds when the last frame holder lets go", [] {
    const int fd = memfd_create("planes", MFD_CLOEXEC);
    EXPECT(fd >= 0, "memfd");
    int dup1 = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    {
      auto frame = std::make_shared<capture::Frame>();
      auto planes = std::make_shared<capture::DmabufPlanes>();
      planes->n_planes = 1;
      planes->fds[0] = dup1;
      frame->dmabuf = planes;
      capture::FramePtr held = frame;  // a consumer's reference
      frame.reset();
      planes.reset();
      if (!FdOpen(dup1)) return std::string("closed while a holder remains");
    }
    const bool closed = !FdOpen(dup1);
    close(fd);
    EXPECT(closed, "the dup'ed fd is closed with the frame");
    return std::string();
  }});
  c.push_back({"software fallback: a LINEAR plane maps with its offset and stride; the view keeps the fd until released", [] {
    const uint32_t w = 37, h = 11, stride = w * 4 + 44, offset = 4096;
    const size_t total = offset + static_cast<size_t>(stride) * h;
    const int fd = MemfdWithPicture(w, h, stride, offset, total);
    EXPECT(fd >= 0, "memfd");
    auto frame = std::make_shared<capture::Frame>();
    frame->width = w;
    frame->height = h;
    frame->seq = 7;
    frame->format_name = "BGRx";
    auto planes = std::make_shared<capture::DmabufPlanes>();
    planes->drm_format = DRM_FORMAT_XRGB8888;
    planes->modifier = DRM_FORMAT_MOD_LINEAR;
    planes->n_planes = 1;
    planes->fds[0] = fd;
    planes->offsets[0] = offset;
    planes->strides[0] = stride;
    frame->dmabuf = planes;
    frame->stride = stride;
    planes.reset();
    std::string err;
    capture::FramePtr view = encode::MapLinearDmabuf(frame, &err);
    EXPECT(view != nullptr, err);
    EXPECT(frame->is_dmabuf() && !view->is_dmabuf(), "the view reads like shared memory");
    EXPECT(view->stride == stride && view->width == w && view->height == h && view->seq == 7, "geometry");
    EXPECT(view->size() == total - offset, "mapped size");
    for (uint32_t y = 0; y < h; ++y)
      for (uint32_t x = 0; x < w * 4; ++x)
        if (view->data()[static_cast<size_t>(y) * stride + x] != static_cast<uint8_t>((x * 7 + y * 13) & 0xff))
          return "pixel mismatch at " + std::to_string(x) + "," + std::to_string(y);
    frame.reset();
    EXPECT(FdOpen(fd), "the view keeps the source frame (and its fd)");
    view.reset();
    EXPECT(!FdOpen(fd), "released: unmapped and closed");
    return std::string();
  }});
  c.push_back({"software fallback: a tiled modifier and a too small object are refused with a reason", [] {
    const int fd = MemfdWithPicture(16, 4, 64, 0, 256);
    EXPECT(fd >= 0, "memfd");
    auto frame = std::make_shared<capture::Frame>();
    frame->width = 16;
    frame->height = 4;
    auto planes = std::make_shared<capture::DmabufPlanes>();
    planes->drm_format = DRM_FORMAT_XRGB8888;
    planes->modifier = I915_FORMAT_MOD_Y_TILED;
    planes->n_planes = 1;
    planes->fds[0] = fd;
    planes->strides[0] = 64;
    frame->dmabuf = planes;
    std::string err;
    EXPECT(encode::MapLinearDmabuf(frame, &err) == nullptr && err.find("not LINEAR") != std::string::npos, err);
    planes->modifier = DRM_FORMAT_MOD_LINEAR;
    frame->height = 5;  // one row more than the object holds
    err.clear();
    EXPECT(encode::MapLinearDmabuf(frame, &err) == nullptr && err.find("too small") != std::string::npos, err);
    frame->height = 4;
    err.clear();
    EXPECT(encode::MapLinearDmabuf(frame, &err) != nullptr, err);
    return std::string();
  }});
  return c;
}

}  // namespace

int main() {
  const std::vector<Case> cases = Cases();
  std::printf("1..%zu\n", cases.size());
  int failed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string r = cases[i].run();
    if (r.empty()) {
      std::printf("ok %zu - %s\n", i + 1, cases[i].name);
    } else {
      ++failed;
      std::printf("not ok %zu - %s\n  # %s\n", i + 1, cases[i].name, r.c_str());
    }
  }
  return failed == 0 ? 0 : 1;
}
