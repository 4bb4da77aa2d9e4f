// h264_vaapi through libavcodec, on the first /dev/dri/renderD* node.
//
// Two input paths:
//  * shared memory (what capture yields on every machine without a GPU): the pipeline converts
//    BGRx -> NV12 once with swscale, and the frame is uploaded into a VAAPI surface
//    (av_hwframe_transfer_data);
//  * DMA-BUF (InputFrame::dmabuf set: capture negotiated DMA-BUF because TS found VA-API first in
//    the backend list and a render node, see capture/dmabuf.h): the planes are described as an
//    AV_PIX_FMT_DRM_PRIME frame (AVDRMFrameDescriptor: one object per distinct fd, one layer with
//    the DRM fourcc), imported as a VAAPI surface with av_hwframe_map into an RGB frames context
//    derived from the same VA device (no CPU copy), converted to NV12 by the GPU's video processor
//    (VPP through libva directly: libavfilter's scale_vaapi would mean linking libavfilter for one
//    filter) into a surface of the encoder's pool, then encoded. An import or VPP failure is a
//    backend error: the pipeline falls back to the next backend, which reads LINEAR DMA-BUFs by
//    mmap or has capture renegotiate to shared memory (encode/dmabuf_map.h).
// Compiled and probed everywhere; it never ran here (no GPU, no /dev/dri on these machines).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <va/va.h>
#include <va/va_vpp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "encode/dmabuf_map.h"
#include "encode/lavc_backend.h"

extern "C" {
#include <drm_fourcc.h>
#include <libavutil/hwcontext.h>
#include <libavutil/hwcontext_drm.h>
#include <libavutil/hwcontext_vaapi.h>
#include <libavutil/opt.h>
}

namespace wl::encode {

bool VaapiDevicePresent(std::string* device, std::string* reason) {
  DIR* d = opendir("/dev/dri");
  if (d == nullptr) {
    *reason = "no /dev/dri (no GPU is exposed to this machine or container)";
    return false;
  }
  std::vector<std::string> nodes;
  while (dirent* e = readdir(d)) {
    if (std::strncmp(e->d_name, "renderD", 7) == 0) nodes.push_back(std::string("/dev/dri/") + e->d_name);
  }
  closedir(d);
  std::sort(nodes.begin(), nodes.end());
  if (nodes.empty()) {
    *reason = "no /dev/dri/renderD* render node";
    return false;
  }
  for (const std::string& n : nodes) {
    const int fd = open(n.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      close(fd);
      *device = n;
      return true;
    }
  }
  *reason = nodes.front() + " cannot be opened (is this user in the render group?)";
  return false;
}

namespace {

void FreeDrmDescriptor(void* /*opaque*/, uint8_t* data) { av_free(data); }

bool SameFile(int a, int b) {
  struct stat sa, sb;
  return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// The software layout FFmpeg's VAAPI frames context uses for an imported RGB DMA-BUF.
AVPixelFormat SwFormatOfDrm(uint32_t drm) {
  switch (drm) {
    case DRM_FORMAT_XRGB8888: return AV_PIX_FMT_BGR0;
    case DRM_FORMAT_ARGB8888: return AV_PIX_FMT_BGRA;
    case DRM_FORMAT_XBGR8888: return AV_PIX_FMT_RGB0;
    case DRM_FORMAT_ABGR8888: return AV_PIX_FMT_RGBA;
    case DRM_FORMAT_BGRX8888: return AV_PIX_FMT_0RGB;
    case DRM_FORMAT_BGRA8888: return AV_PIX_FMT_ARGB;
    case DRM_FORMAT_RGBX8888: return AV_PIX_FMT_0BGR;
    case DRM_FORMAT_RGBA8888: return AV_PIX_FMT_ABGR;
    default: return AV_PIX_FMT_NONE;
  }
}

class VaapiBackend final : public LavcBackend {
 public:
  const char* Name() const override { return "vaapi"; }
  AVPixelFormat InputFormat() const override { return AV_PIX_FMT_NV12; }
  Capabilities Caps() const override {
    Capabilities c;
    // FFmpeg 5.1's vaapi_encode reads the rate control parameters once, at init: a change reopens.
    c.bitrate_without_idr = false;
    c.framerate_without_idr = false;
    c.roi = true;  // VAEncMiscParameterBufferROI, when the driver reports ROI support
    c.intra_refresh = false;
    c.zero_copy_dmabuf = true;
    return c;
  }

 protected:
  const char* CodecName() const override { return "h264_vaapi"; }

  bool Configure(AVCodecContext* ctx, AVDictionary** opts, std::string* error) override {
    std::string reason;
    if (!VaapiDevicePresent(&device_path_, &reason)) {
      *error = "vaapi: " + reason;
      return false;
    }
    int r = av_hwdevice_ctx_create(&device_, AV_HWDEVICE_TYPE_VAAPI, device_path_.c_str(), nullptr, 0);
    if (r < 0) {
      *error = "vaapi: cannot initialise VA-API on " + device_path_ + ": " + AvError(r);
      return false;
    }
    frames_ = av_hwframe_ctx_alloc(device_);
    if (frames_ == nullptr) {
      *error = "vaapi: av_hwframe_ctx_alloc failed";
      return false;
    }
    auto* fc = reinterpret_cast<AVHWFramesContext*>(frames_->data);
    fc->format = AV_PIX_FMT_VAAPI;
    fc->sw_format = AV_PIX_FMT_NV12;
    fc->width = static_cast<int>(cfg_.width);
    fc->height = static_cast<int>(cfg_.height);
    fc->initial_pool_size = 4;
    if ((r = av_hwframe_ctx_init(frames_)) < 0) {
      *error = "vaapi: cannot create NV12 surfaces: " + AvError(r);
      return false;
    }
    ctx->pix_fmt = AV_PIX_FMT_VAAPI;
    ctx->hw_frames_ctx = av_buffer_ref(frames_);
    ctx->profile = cfg_.profile == Profile::kMain ? FF_PROFILE_H264_MAIN : FF_PROFILE_H264_CONSTRAINED_BASELINE;
    av_dict_set(opts, "rc_mode", "CBR", 0);
    av_dict_set(opts, "async_depth", "1", 0);  // one frame in flight: lowest latency
    av_dict_set(opts, "idr_interval", "0", 0);
    av_dict_set(opts, "b_depth", "1", 0);
    av_dict_set(opts, "aud", "0", 0);
    return true;
  }

  AVFrame* PrepareFrame(const InputFrame& in, std::string* error) override {
    if (hw_ == nullptr) hw_ = av_frame_alloc();
    av_frame_unref(hw_);
    if (in.dmabuf != nullptr) return MapDmaBuf(in, error) ? hw_ : nullptr;
    int r = av_hwframe_get_buffer(frames_, hw_, 0);
    if (r < 0) {
      *error = "vaapi: no free surface: " + AvError(r);
      return nullptr;
    }
    if ((r = av_hwframe_transfer_data(hw_, in.av, 0)) < 0) {
      *error = "vaapi: upload failed: " + AvError(r);
      return nullptr;
    }
    av_frame_copy_props(hw_, in.av);
    return hw_;
  }

  void ReleaseHw() override {
    if (vpp_ctx_ != VA_INVALID_ID) vaDestroyContext(Display(), vpp_ctx_);
    if (vpp_cfg_ != VA_INVALID_ID) vaDestroyConfig(Display(), vpp_cfg_);
    vpp_ctx_ = vpp_cfg_ = VA_INVALID_ID;
    if (hw_ != nullptr) av_frame_free(&hw_);
    av_buffer_unref(&rgb_frames_);
    av_buffer_unref(&frames_);
    av_buffer_unref(&device_);
  }

 private:
  VADisplay Display() const {
    if (device_ == nullptr) return nullptr;
    auto* dc = reinterpret_cast<AVHWDeviceContext*>(device_->data);
    return static_cast<AVVAAPIDeviceContext*>(dc->hwctx)->display;
  }

  // DRM PRIME -> VAAPI surface (import, no copy) -> VPP -> NV12 surface from the encoder's pool.
  bool MapDmaBuf(const InputFrame& in, std::string* error) {
    int r;
    const capture::DmabufPlanes& planes = *in.dmabuf;
    // The imported surface has the capture's size; the VPP below writes the encoder's surface, scaling
    // when they differ (a lower rung: VAProcPipelineParameterBuffer with no regions = whole surfaces).
    const uint32_t src_w = in.dmabuf_width != 0 ? in.dmabuf_width : cfg_.width;
    const uint32_t src_h = in.dmabuf_height != 0 ? in.dmabuf_height : cfg_.height;
    if (rgb_frames_ != nullptr && (rgb_drm_format_ != planes.drm_format || rgb_w_ != src_w || rgb_h_ != src_h)) av_buffer_unref(&rgb_frames_);
    if (rgb_frames_ == nullptr) {
      rgb_drm_format_ = planes.drm_format;
      rgb_w_ = src_w;
      rgb_h_ = src_h;
      rgb_frames_ = av_hwframe_ctx_alloc(device_);
      auto* fc = reinterpret_cast<AVHWFramesContext*>(rgb_frames_->data);
      fc->format = AV_PIX_FMT_VAAPI;
      fc->sw_format = SwFormatOfDrm(planes.drm_format);
      if (fc->sw_format == AV_PIX_FMT_NONE) {
        *error = "vaapi: DMA-BUF with an unsupported DRM format";
        av_buffer_unref(&rgb_frames_);
        return false;
      }
      fc->width = static_cast<int>(src_w);
      fc->height = static_cast<int>(src_h);
      fc->initial_pool_size = 0;  // only mapped (imported) surfaces, never allocated
      if ((r = av_hwframe_ctx_init(rgb_frames_)) < 0) {
        *error = "vaapi: cannot create an RGB frames context for DMA-BUF import: " + AvError(r);
        av_buffer_unref(&rgb_frames_);
        return false;
      }
    }
    if (vpp_cfg_ == VA_INVALID_ID) {
      if (vaCreateConfig(Display(), VAProfileNone, VAEntrypointVideoProc, nullptr, 0, &vpp_cfg_) != VA_STATUS_SUCCESS ||
          vaCreateContext(Display(), vpp_cfg_, static_cast<int>(cfg_.width), static_cast<int>(cfg_.height), VA_PROGRESSIVE,
                          nullptr, 0, &vpp_ctx_) != VA_STATUS_SUCCESS) {
        *error = "vaapi: the driver has no video processor (VAEntrypointVideoProc) for RGB -> NV12";
        return false;
      }
    }
    auto* desc = static_cast<AVDRMFrameDescriptor*>(av_mallocz(sizeof(AVDRMFrameDescriptor)));
    // One object per distinct fd (capture dup'ed each plane's fd, so equal objects show as equal
    // inodes, not equal numbers: planes of one buffer share an object when their fds point to the
    // same file). Borrowed: the capture frame owns the fds until it is released, after Encode().
    desc->nb_layers = 1;
    desc->layers[0].format = planes.drm_format;
    desc->layers[0].nb_planes = static_cast<int>(planes.n_planes);
    for (uint32_t i = 0; i < planes.n_planes; ++i) {
      int obj = -1;
      for (int o = 0; o < desc->nb_objects; ++o)
        if (SameFile(desc->objects[o].fd, planes.fds[i])) obj = o;
      if (obj < 0) {
        obj = desc->nb_objects++;
        desc->objects[obj].fd = planes.fds[i];
        desc->objects[obj].size = DmabufObjectSize(planes.fds[i]);
        // DRM_FORMAT_MOD_INVALID: the producer allocated with the driver's implicit layout; VA-API
        // imports it as such (FFmpeg passes the value through to VADRMPRIMESurfaceDescriptor).
        desc->objects[obj].format_modifier = planes.modifier;
      }
      desc->layers[0].planes[i].object_index = obj;
      desc->layers[0].planes[i].offset = planes.offsets[i];
      desc->layers[0].planes[i].pitch = planes.strides[i];
    }
    AVFrame* drm = av_frame_alloc();
    AVFrame* mapped = av_frame_alloc();
    drm->format = AV_PIX_FMT_DRM_PRIME;
    drm->width = static_cast<int>(src_w);
    drm->height = static_cast<int>(src_h);
    drm->data[0] = reinterpret_cast<uint8_t*>(desc);
    drm->buf[0] = av_buffer_create(reinterpret_cast<uint8_t*>(desc), sizeof(*desc), FreeDrmDescriptor, nullptr, 0);
    mapped->format = AV_PIX_FMT_VAAPI;
    mapped->hw_frames_ctx = av_buffer_ref(rgb_frames_);
    bool ok = false;
    if ((r = av_hwframe_map(mapped, drm, AV_HWFRAME_MAP_READ)) < 0) {
      *error = "vaapi: DMA-BUF import (av_hwframe_map DRM_PRIME -> VAAPI) failed: " + AvError(r);
    } else if ((r = av_hwframe_get_buffer(frames_, hw_, 0)) < 0) {
      *error = "vaapi: no free NV12 surface: " + AvError(r);
    } else {
      ok = Convert(static_cast<VASurfaceID>(reinterpret_cast<uintptr_t>(mapped->data[3])),
                   static_cast<VASurfaceID>(reinterpret_cast<uintptr_t>(hw_->data[3])), error);
    }
    av_frame_free(&mapped);
    av_frame_free(&drm);
    return ok;
  }

  bool Convert(VASurfaceID src, VASurfaceID dst, std::string* error) {
    VAProcPipelineParameterBuffer p;
    std::memset(&p, 0, sizeof(p));
    p.surface = src;
    p.surface_color_standard = VAProcColorStandardSRGB;
    p.output_color_standard = VAProcColorStandardBT709;
    p.output_background_color = 0xff000000;
    p.filter_flags = VA_FRAME_PICTURE;
    VABufferID buf = VA_INVALID_ID;
    VADisplay dpy = Display();
    if (vaCreateBuffer(dpy, vpp_ctx_, VAProcPipelineParameterBufferType, sizeof(p), 1, &p, &buf) != VA_STATUS_SUCCESS) {
      *error = "vaapi: vaCreateBuffer (VPP) failed";
      return false;
    }
    VAStatus s = vaBeginPicture(dpy, vpp_ctx_, dst);
    if (s == VA_STATUS_SUCCESS) s = vaRenderPicture(dpy, vpp_ctx_, &buf, 1);
    if (s == VA_STATUS_SUCCESS) s = vaEndPicture(dpy, vpp_ctx_);
    // The imported surface is unmapped right after this, and capture already gave the buffer back
    // to the producer: the GPU must have read it before we return.
    if (s == VA_STATUS_SUCCESS) s = vaSyncSurface(dpy, dst);
    vaDestroyBuffer(dpy, buf);
    if (s != VA_STATUS_SUCCESS) {
      *error = std::string("vaapi: VPP RGB -> NV12 failed: ") + vaErrorStr(s);
      return false;
    }
    return true;
  }

  std::string device_path_;
  AVBufferRef* device_ = nullptr;
  AVBufferRef* frames_ = nullptr;      // NV12 surfaces the encoder reads
  AVBufferRef* rgb_frames_ = nullptr;  // imported DMA-BUF surfaces
  AVFrame* hw_ = nullptr;
  uint32_t rgb_drm_format_ = 0;
  uint32_t rgb_w_ = 0, rgb_h_ = 0;  // size of the imported (capture) surfaces
  VAConfigID vpp_cfg_ = VA_INVALID_ID;
  VAContextID vpp_ctx_ = VA_INVALID_ID;
};

}  // namespace

std::unique_ptr<Backend> CreateVaapiBackend() { return std::make_unique<VaapiBackend>(); }

}  // namespace wl::encode
