// h264_vaapi through libavcodec, on the first /dev/dri/renderD* node.
//
// Two input paths:
//  * shared memory (what capture yields on every machine without a GPU, and the only path the
//    capture stage feeds today): the pipeline converts BGRx -> NV12 once with swscale, and the
//    frame is uploaded into a VAAPI surface (av_hwframe_transfer_data);
//  * DMA-BUF (InputFrame::dmabuf_fd >= 0): the buffer is wrapped as an AV_PIX_FMT_DRM_PRIME frame,
//    imported as a VAAPI surface with av_hwframe_map (no CPU copy), and converted to NV12 by the GPU's
//    video processor (VPP, libva directly: libavfilter's scale_vaapi is not linked here), then
//    encoded. Capture does not hand out DMA-BUFs yet (no GPU importer on these machines), so this path
//    compiles and is reached only with a render node.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <va/va.h>
#include <va/va_vpp.h>

#include <algorithm>
#include <cstring>
#include <vector>

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
    if (in.dmabuf_fd >= 0) return MapDmaBuf(in, error) ? hw_ : nullptr;
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
    if (rgb_frames_ == nullptr) {
      rgb_frames_ = av_hwframe_ctx_alloc(device_);
      auto* fc = reinterpret_cast<AVHWFramesContext*>(rgb_frames_->data);
      fc->format = AV_PIX_FMT_VAAPI;
      fc->sw_format = AV_PIX_FMT_BGR0;
      fc->width = static_cast<int>(cfg_.width);
      fc->height = static_cast<int>(cfg_.height);
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
    desc->nb_objects = 1;
    desc->objects[0].fd = in.dmabuf_fd;  // borrowed: capture keeps it open until the frame is released
    desc->objects[0].size = static_cast<size_t>(in.dmabuf_pitch) * cfg_.height + in.dmabuf_offset;
    desc->objects[0].format_modifier = in.drm_modifier;
    desc->nb_layers = 1;
    desc->layers[0].format = in.drm_format ? in.drm_format : DRM_FORMAT_XRGB8888;
    desc->layers[0].nb_planes = 1;
    desc->layers[0].planes[0].object_index = 0;
    desc->layers[0].planes[0].offset = in.dmabuf_offset;
    desc->layers[0].planes[0].pitch = in.dmabuf_pitch;
    AVFrame* drm = av_frame_alloc();
    AVFrame* mapped = av_frame_alloc();
    drm->format = AV_PIX_FMT_DRM_PRIME;
    drm->width = static_cast<int>(cfg_.width);
    drm->height = static_cast<int>(cfg_.height);
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
  VAConfigID vpp_cfg_ = VA_INVALID_ID;
  VAContextID vpp_ctx_ = VA_INVALID_ID;
};

}  // namespace

std::unique_ptr<Backend> CreateVaapiBackend() { return std::make_unique<VaapiBackend>(); }

}  // namespace wl::encode
