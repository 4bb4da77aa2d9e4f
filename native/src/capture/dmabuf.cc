#include "capture/dmabuf.h"

#include <fcntl.h>
#include <spa/buffer/buffer.h>
#include <spa/param/buffers.h>
#include <spa/param/format-utils.h>
#include <unistd.h>
#include <va/va.h>
#include <va/va_drm.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

extern "C" {
#include <drm_fourcc.h>
}

namespace wl::capture {
namespace {

// VA fourccs name bytes in memory order, as SPA does.
uint32_t VaFourccOfSpa(uint32_t f) {
  switch (f) {
    case SPA_VIDEO_FORMAT_BGRx: return VA_FOURCC_BGRX;
    case SPA_VIDEO_FORMAT_RGBx: return VA_FOURCC_RGBX;
    case SPA_VIDEO_FORMAT_BGRA: return VA_FOURCC_BGRA;
    case SPA_VIDEO_FORMAT_RGBA: return VA_FOURCC_RGBA;
    case SPA_VIDEO_FORMAT_xRGB: return VA_FOURCC_XRGB;
    case SPA_VIDEO_FORMAT_xBGR: return VA_FOURCC_XBGR;
    case SPA_VIDEO_FORMAT_ARGB: return VA_FOURCC_ARGB;
    case SPA_VIDEO_FORMAT_ABGR: return VA_FOURCC_ABGR;
    default: return 0;
  }
}

void Quiet(void* /*ctx*/, const char* /*message*/) {}

}  // namespace

uint32_t DrmFourccOfSpa(uint32_t f) {
  switch (f) {
    case SPA_VIDEO_FORMAT_BGRx: return DRM_FORMAT_XRGB8888;
    case SPA_VIDEO_FORMAT_RGBx: return DRM_FORMAT_XBGR8888;
    case SPA_VIDEO_FORMAT_BGRA: return DRM_FORMAT_ARGB8888;
    case SPA_VIDEO_FORMAT_RGBA: return DRM_FORMAT_ABGR8888;
    case SPA_VIDEO_FORMAT_xRGB: return DRM_FORMAT_BGRX8888;
    case SPA_VIDEO_FORMAT_xBGR: return DRM_FORMAT_RGBX8888;
    case SPA_VIDEO_FORMAT_ARGB: return DRM_FORMAT_BGRA8888;
    case SPA_VIDEO_FORMAT_ABGR: return DRM_FORMAT_RGBA8888;
    default: return 0;
  }
}

DmabufOffer ProbeDmabufImport(const std::string& device, const std::vector<uint32_t>& wanted) {
  DmabufOffer offer;
  offer.device = device;
  if (device.empty()) {
    offer.reason = "no render node given";
    return offer;
  }
  const int fd = open(device.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    offer.reason = "cannot open " + device + ": " + std::strerror(errno) +
                   (errno == ENOENT ? " (no /dev/dri/renderD* here: no GPU exposed)" : errno == EACCES ? " (not in the render group?)" : "");
    return offer;
  }
  VADisplay dpy = vaGetDisplayDRM(fd);
  if (dpy == nullptr) {
    close(fd);
    offer.reason = "vaGetDisplayDRM(" + device + ") failed";
    return offer;
  }
  vaSetInfoCallback(dpy, Quiet, nullptr);
  vaSetErrorCallback(dpy, Quiet, nullptr);
  int major = 0, minor = 0;
  VAStatus s = vaInitialize(dpy, &major, &minor);
  VAConfigID config = VA_INVALID_ID;
  if (s != VA_STATUS_SUCCESS) {
    offer.reason = std::string("VA-API cannot initialise on ") + device + ": " + vaErrorStr(s) + " (no VA driver for this GPU?)";
  } else if ((s = vaCreateConfig(dpy, VAProfileNone, VAEntrypointVideoProc, nullptr, 0, &config)) != VA_STATUS_SUCCESS) {
    offer.reason = std::string("the VA driver on ") + device + " has no video processor (VAEntrypointVideoProc) for RGB -> NV12: " + vaErrorStr(s);
  } else {
    unsigned n = 0;
    std::vector<VASurfaceAttrib> attrs;
    if (vaQuerySurfaceAttributes(dpy, config, nullptr, &n) == VA_STATUS_SUCCESS && n > 0) {
      attrs.resize(n);
      if (vaQuerySurfaceAttributes(dpy, config, attrs.data(), &n) != VA_STATUS_SUCCESS) n = 0;
      attrs.resize(n);
    }
    for (uint32_t f : wanted) {
      const uint32_t va = VaFourccOfSpa(f);
      const bool listed = std::any_of(attrs.begin(), attrs.end(), [va](const VASurfaceAttrib& a) {
        return a.type == VASurfaceAttribPixelFormat && static_cast<uint32_t>(a.value.value.i) == va;
      });
      if (listed) offer.spa_formats.push_back(f);
    }
    if (offer.spa_formats.empty() && attrs.empty()) {
      // Some drivers list no pixel formats for VPP: assume the universal one (BGRx, what sway and
      // mutter produce); a failing import later renegotiates to shared memory.
      offer.spa_formats.push_back(SPA_VIDEO_FORMAT_BGRx);
    }
    if (offer.spa_formats.empty()) {
      offer.reason = "the video processor on " + device + " takes none of the capture's RGB layouts";
    } else {
      offer.enabled = true;
      offer.modifiers = {DRM_FORMAT_MOD_LINEAR, DRM_FORMAT_MOD_INVALID};
      offer.reason = "VA-API " + std::to_string(major) + "." + std::to_string(minor) + " on " + device + " (" +
                     (vaQueryVendorString(dpy) ? vaQueryVendorString(dpy) : "?") + "): LINEAR + the producer's implicit modifier";
    }
  }
  if (config != VA_INVALID_ID) vaDestroyConfig(dpy, config);
  vaTerminate(dpy);
  close(fd);
  return offer;
}

uint32_t BuildEnumFormats(struct spa_pod_builder* b, const DmabufOffer& offer, const uint32_t* shm_formats, size_t n_shm,
                          const struct spa_pod** params, uint32_t max) {
  uint32_t n = 0;
  struct spa_rectangle size_def = SPA_RECTANGLE(1920, 1080), size_min = SPA_RECTANGLE(1, 1), size_max = SPA_RECTANGLE(8192, 8192);
  struct spa_fraction rate_def = SPA_FRACTION(0, 1), rate_min = SPA_FRACTION(0, 1), rate_max = SPA_FRACTION(360, 1);
  auto common = [&]() {
    spa_pod_builder_add(b, SPA_FORMAT_VIDEO_size, SPA_POD_CHOICE_RANGE_Rectangle(&size_def, &size_min, &size_max), 0);
    spa_pod_builder_add(b, SPA_FORMAT_VIDEO_framerate, SPA_POD_CHOICE_RANGE_Fraction(&rate_def, &rate_min, &rate_max), 0);
  };
  if (offer.enabled && !offer.modifiers.empty()) {
    // One EnumFormat per layout: the modifiers a driver imports depend on the layout.
    for (uint32_t fmt : offer.spa_formats) {
      if (n >= max) break;
      struct spa_pod_frame f[2];
      spa_pod_builder_push_object(b, &f[0], SPA_TYPE_OBJECT_Format, SPA_PARAM_EnumFormat);
      spa_pod_builder_add(b, SPA_FORMAT_mediaType, SPA_POD_Id(SPA_MEDIA_TYPE_video), 0);
      spa_pod_builder_add(b, SPA_FORMAT_mediaSubtype, SPA_POD_Id(SPA_MEDIA_SUBTYPE_raw), 0);
      spa_pod_builder_add(b, SPA_FORMAT_VIDEO_format, SPA_POD_Id(fmt), 0);
      if (offer.modifiers.size() == 1 && offer.modifiers[0] == DRM_FORMAT_MOD_INVALID) {
        // Implicit modifier only: nothing to fixate (the short path of the protocol).
        spa_pod_builder_prop(b, SPA_FORMAT_VIDEO_modifier, SPA_POD_PROP_FLAG_MANDATORY);
        spa_pod_builder_long(b, static_cast<int64_t>(offer.modifiers[0]));
      } else {
        spa_pod_builder_prop(b, SPA_FORMAT_VIDEO_modifier, SPA_POD_PROP_FLAG_MANDATORY | SPA_POD_PROP_FLAG_DONT_FIXATE);
        spa_pod_builder_push_choice(b, &f[1], SPA_CHOICE_Enum, 0);
        spa_pod_builder_long(b, static_cast<int64_t>(offer.modifiers[0]));  // the enum's default
        for (uint64_t m : offer.modifiers) spa_pod_builder_long(b, static_cast<int64_t>(m));
        spa_pod_builder_pop(b, &f[1]);
      }
      common();
      params[n++] = static_cast<const struct spa_pod*>(spa_pod_builder_pop(b, &f[0]));
    }
  }
  if (n < max && n_shm > 0) {
    // Shared memory: every layout in one enum choice, no modifier property.
    struct spa_pod_frame f[2];
    spa_pod_builder_push_object(b, &f[0], SPA_TYPE_OBJECT_Format, SPA_PARAM_EnumFormat);
    spa_pod_builder_add(b, SPA_FORMAT_mediaType, SPA_POD_Id(SPA_MEDIA_TYPE_video), 0);
    spa_pod_builder_add(b, SPA_FORMAT_mediaSubtype, SPA_POD_Id(SPA_MEDIA_SUBTYPE_raw), 0);
    spa_pod_builder_prop(b, SPA_FORMAT_VIDEO_format, 0);
    spa_pod_builder_push_choice(b, &f[1], SPA_CHOICE_Enum, 0);
    spa_pod_builder_id(b, shm_formats[0]);  // the default
    for (size_t i = 0; i < n_shm; ++i) spa_pod_builder_id(b, shm_formats[i]);
    spa_pod_builder_pop(b, &f[1]);
    common();
    params[n++] = static_cast<const struct spa_pod*>(spa_pod_builder_pop(b, &f[0]));
  }
  return n;
}

uint32_t CaptureBufferCount(uint32_t width, uint32_t height) {
  const uint64_t frame = static_cast<uint64_t>(width) * height * 4;
  const uint64_t fit = frame == 0 ? 8 : kCaptureBufferBudgetBytes / frame;
  return static_cast<uint32_t>(std::clamp<uint64_t>(fit, 3, 8));
}

const struct spa_pod* BuildBuffersParam(struct spa_pod_builder* b, bool dmabuf, uint32_t width, uint32_t height) {
  const int data_types = dmabuf ? (1 << SPA_DATA_DmaBuf) : ((1 << SPA_DATA_MemFd) | (1 << SPA_DATA_MemPtr));
  // A preference, not a demand: the range accepts whatever the producer can do.
  const int count = static_cast<int>(CaptureBufferCount(width, height));
  return static_cast<const struct spa_pod*>(spa_pod_builder_add_object(
      b, SPA_TYPE_OBJECT_ParamBuffers, SPA_PARAM_Buffers, SPA_PARAM_BUFFERS_buffers, SPA_POD_CHOICE_RANGE_Int(count, 1, 32),
      SPA_PARAM_BUFFERS_dataType, SPA_POD_CHOICE_FLAGS_Int(data_types)));
}

bool FormatSelectsDmabuf(const struct spa_pod* format, uint64_t* modifier, bool* needs_fixation) {
  *needs_fixation = false;
  if (format == nullptr || !spa_pod_is_object(format)) return false;
  const struct spa_pod_prop* prop = spa_pod_find_prop(format, nullptr, SPA_FORMAT_VIDEO_modifier);
  if (prop == nullptr) return false;
  *needs_fixation = (prop->flags & SPA_POD_PROP_FLAG_DONT_FIXATE) != 0;
  uint32_t n_vals = 0, choice = 0;
  const struct spa_pod* val = spa_pod_get_values(&prop->value, &n_vals, &choice);
  int64_t m = 0;
  if (val == nullptr || n_vals == 0 || spa_pod_get_long(val, &m) < 0) return false;
  *modifier = static_cast<uint64_t>(m);
  return true;
}

}  // namespace wl::capture
