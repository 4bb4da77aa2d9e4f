#include "encode/convert.h"

#include <algorithm>
#include <thread>

extern "C" {
#include <libavutil/error.h>
#include <libavutil/frame.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

namespace wl::encode {
namespace {

AVPixelFormat AvFormatOf(const std::string& spa) {
  // SPA names are byte order in memory; FFmpeg's "0"/"A" formats are too.
  if (spa == "BGRx") return AV_PIX_FMT_BGR0;
  if (spa == "RGBx") return AV_PIX_FMT_RGB0;
  if (spa == "xRGB") return AV_PIX_FMT_0RGB;
  if (spa == "xBGR") return AV_PIX_FMT_0BGR;
  if (spa == "BGRA") return AV_PIX_FMT_BGRA;
  if (spa == "RGBA") return AV_PIX_FMT_RGBA;
  if (spa == "ARGB") return AV_PIX_FMT_ARGB;
  if (spa == "ABGR") return AV_PIX_FMT_ABGR;
  return AV_PIX_FMT_NONE;
}

// Keeps a capture frame alive while libavcodec or swscale holds a buffer that points into it.
void ReleaseCaptureFrame(void* opaque, uint8_t* /*data*/) { delete static_cast<capture::FramePtr*>(opaque); }

std::string Err(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof(buf));
  return buf;
}

}  // namespace

std::vector<RowBand> DamageRowBands(const std::vector<damage::Rect>& damage, uint32_t width, uint32_t height,
                                    uint32_t align, uint32_t merge_gap) {
  align = std::max<uint32_t>(align, 1);
  std::vector<RowBand> bands;
  bands.reserve(damage.size());
  for (damage::Rect r : damage) {
    if (!damage::Clip(&r, width, height)) continue;
    const uint32_t y0 = r.y / align * align;
    const uint64_t end = (static_cast<uint64_t>(r.y) + r.height + align - 1) / align * align;
    const uint32_t y1 = static_cast<uint32_t>(std::min<uint64_t>(end, height));
    bands.push_back(RowBand{y0, y1 - y0});
  }
  std::sort(bands.begin(), bands.end(), [](const RowBand& a, const RowBand& b) { return a.y < b.y; });
  std::vector<RowBand> merged;
  for (const RowBand& b : bands) {
    if (!merged.empty() && b.y <= merged.back().y + merged.back().height + merge_gap) {
      // Both ends are aligned (or the last one is `height`), so the merged band is too.
      RowBand& m = merged.back();
      m.height = std::max(m.y + m.height, b.y + b.height) - m.y;
    } else {
      merged.push_back(b);
    }
  }
  return merged;
}

Converter::~Converter() { Reset(); }

void Converter::Reset() {
  if (sws_ != nullptr) sws_freeContext(sws_);
  sws_ = nullptr;
  sws_src_fmt_ = sws_dst_fmt_ = -1;
  sws_w_ = sws_h_ = sws_out_w_ = sws_out_h_ = 0;
  if (converted_ != nullptr) av_frame_free(&converted_);
  if (src_frame_ != nullptr) av_frame_free(&src_frame_);
  Invalidate();
}

bool Converter::Convert(const capture::Frame& frame, const capture::FramePtr& keep, AVPixelFormat dst,
                        const std::vector<damage::Rect>* damage, bool full, std::string* error, uint32_t out_w,
                        uint32_t out_h) {
  last_ = ConvertInfo();
  const AVPixelFormat src = AvFormatOf(frame.format_name);
  if (src == AV_PIX_FMT_NONE) {
    *error = "unsupported capture format " + frame.format_name;
    Invalidate();
    return false;
  }
  if (frame.is_dmabuf()) {
    // Pixels in GPU memory: the pipeline maps LINEAR ones (encode/dmabuf_map.h) or renegotiates.
    *error = "a DMA-BUF frame reached the CPU colour conversion without a mapping";
    Invalidate();
    return false;
  }
  const int w = static_cast<int>(frame.width), h = static_cast<int>(frame.height);
  const int ow = out_w != 0 ? static_cast<int>(out_w) : w, oh = out_h != 0 ? static_cast<int>(out_h) : h;
  const bool scaled = ow != w || oh != h;
  // A refresh re-encodes the frame converted last time: the converted picture is still there.
  if (valid_ && converted_ != nullptr && from_ == &frame && from_seq_ == frame.seq && converted_->format == dst &&
      converted_->width == ow && converted_->height == oh) {
    last_.reused = true;
    return true;
  }
  if (dst == src && !scaled) {
    // NVENC takes 32-bit RGB as it is: hand it the capture buffer itself, kept alive by a reference.
    if (converted_ == nullptr) converted_ = av_frame_alloc();
    av_frame_unref(converted_);
    converted_->format = src;
    converted_->width = w;
    converted_->height = h;
    converted_->buf[0] = av_buffer_create(const_cast<uint8_t*>(frame.data()), frame.size(), ReleaseCaptureFrame,
                                          new capture::FramePtr(keep), AV_BUFFER_FLAG_READONLY);
    converted_->data[0] = const_cast<uint8_t*>(frame.data());
    converted_->linesize[0] = static_cast<int>(frame.stride);
    valid_ = true;
    from_ = &frame;
    from_seq_ = frame.seq;
    last_.full = true;
    return true;
  }
  if (sws_ == nullptr || sws_src_fmt_ != src || sws_dst_fmt_ != dst || sws_w_ != w || sws_h_ != h || sws_out_w_ != ow ||
      sws_out_h_ != oh) {
    if (sws_ != nullptr) sws_freeContext(sws_);
    Invalidate();
    // Same size, so no scaling: the flags only choose the chroma filter. Fast bilinear keeps the
    // SIMD input converters (BGRx -> Y/UV) and averages 2x2 for chroma. Slice threads (swscale's
    // own, FFmpeg >= 5.0) as many as the encoder's: the conversion is the other half of the work.
    // Scaled (a lower rung): bilinear, whose filter widens with the ratio (see the top of convert.h).
    sws_ = sws_alloc_context();
    const unsigned threads = threads_ ? threads_ : std::max(1u, std::thread::hardware_concurrency());
    av_opt_set_int(sws_, "srcw", w, 0);
    av_opt_set_int(sws_, "srch", h, 0);
    av_opt_set_int(sws_, "src_format", src, 0);
    av_opt_set_int(sws_, "dstw", ow, 0);
    av_opt_set_int(sws_, "dsth", oh, 0);
    av_opt_set_int(sws_, "dst_format", dst, 0);
    av_opt_set_int(sws_, "sws_flags", scaled ? SWS_BILINEAR : SWS_FAST_BILINEAR, 0);
    av_opt_set_int(sws_, "threads", static_cast<int64_t>(std::min(threads, 8u)), 0);
    if (sws_init_context(sws_, nullptr, nullptr) < 0) {
      sws_freeContext(sws_);
      sws_ = nullptr;
      *error = "swscale cannot convert " + frame.format_name + " to the encoder's format";
      return false;
    }
    // BT.709 limited range, as the encoders' VUI announces.
    sws_setColorspaceDetails(sws_, sws_getCoefficients(SWS_CS_DEFAULT), 1, sws_getCoefficients(SWS_CS_ITU709), 0, 0,
                             1 << 16, 1 << 16);
    sws_src_fmt_ = src;
    sws_dst_fmt_ = dst;
    sws_w_ = w;
    sws_h_ = h;
    sws_out_w_ = ow;
    sws_out_h_ = oh;
    // Output bands must start (and, but for the last, end) on swscale's alignment, which covers the
    // chroma subsampling (2 rows for 4:2:0); taken at least as the chroma's own, to be safe.
    const AVPixFmtDescriptor* desc = av_pix_fmt_desc_get(dst);
    align_ = std::max<uint32_t>(sws_receive_slice_alignment(sws_), desc != nullptr ? 1u << desc->log2_chroma_h : 1u);
    const uint32_t align_w = desc != nullptr ? 1u << desc->log2_chroma_w : 1u;
    // Below 8 pixels of width a band and a full conversion differ (measured: the SIMD readers work in
    // blocks wider than the row); 16 leaves a margin and no screen is that narrow.
    bands_ok_ = !scaled && frame.width % align_w == 0 && frame.height % align_ == 0 && frame.width >= 16;
    if (converted_ != nullptr) av_frame_free(&converted_);
  }
  if (converted_ == nullptr || converted_->format != dst || converted_->width != ow || converted_->height != oh) {
    if (converted_ != nullptr) av_frame_free(&converted_);
    Invalidate();
    converted_ = av_frame_alloc();
    converted_->format = dst;
    converted_->width = ow;
    converted_->height = oh;
    if (av_frame_get_buffer(converted_, 64) < 0) {
      av_frame_free(&converted_);
      *error = "out of memory for the converted frame";
      return false;
    }
  }
  // Persistent buffer. If the encoder still references it, a new one is allocated and the picture
  // copied into it (av_frame_make_writable copies), so the unchanged rows stay right.
  if (av_frame_make_writable(converted_) < 0) {
    Invalidate();
    *error = "out of memory for the converted frame";
    return false;
  }
  std::vector<RowBand> bands;
  bool whole = full || !valid_ || damage == nullptr || !bands_ok_ || scaled;
  uint32_t rows = 0;
  if (!whole) {
    bands = DamageRowBands(*damage, frame.width, frame.height, align_, kMergeGapRows);
    for (const RowBand& b : bands) rows += b.height;
    if (static_cast<double>(rows) > full_ratio_ * h) whole = true;
  }
  // Invalid until the conversion succeeded: a failure halfway leaves a mix of two frames.
  Invalidate();
  if (!whole && bands.empty()) {
    // Damage entirely outside the picture: nothing to convert, the picture is this frame too.
    valid_ = true;
    from_ = &frame;
    from_seq_ = frame.seq;
    return true;
  }
  // The source frame wraps the capture buffer (kept alive by a reference): swscale refs it rather
  // than copying it.
  if (src_frame_ == nullptr) src_frame_ = av_frame_alloc();
  av_frame_unref(src_frame_);
  src_frame_->format = src;
  src_frame_->width = w;
  src_frame_->height = h;
  src_frame_->buf[0] = av_buffer_create(const_cast<uint8_t*>(frame.data()), frame.size(), ReleaseCaptureFrame,
                                        new capture::FramePtr(keep), AV_BUFFER_FLAG_READONLY);
  src_frame_->data[0] = const_cast<uint8_t*>(frame.data());
  src_frame_->linesize[0] = static_cast<int>(frame.stride);
  int r;
  if (whole) {
    r = sws_scale_frame(sws_, converted_, src_frame_);
  } else {
    // The whole source is available (send_slice of every row): each output band reads the source rows
    // its filters need, so the band's rows come out exactly as in a full conversion.
    r = sws_frame_start(sws_, converted_, src_frame_);
    if (r >= 0) {
      r = sws_send_slice(sws_, 0, static_cast<unsigned>(h));
      for (size_t i = 0; r >= 0 && i < bands.size(); ++i) r = sws_receive_slice(sws_, bands[i].y, bands[i].height);
      sws_frame_end(sws_);
    }
  }
  av_frame_unref(src_frame_);
  if (r < 0) {
    *error = "swscale failed: " + Err(r);
    return false;
  }
  valid_ = true;
  from_ = &frame;
  from_seq_ = frame.seq;
  last_.full = whole;
  last_.rows = whole ? static_cast<uint32_t>(oh) : rows;
  last_.bands = whole ? 0 : static_cast<uint32_t>(bands.size());
  return true;
}

}  // namespace wl::encode
