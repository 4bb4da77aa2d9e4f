// The one interface every H.264 encoder backend implements (libx264 and VA-API/NVENC through
// libavcodec, OpenH264 through its own API), plus the capability probe. The pipeline
// (pipeline.h) owns exactly one open backend at a time and falls back along the configured
// priority list when one cannot open or fails mid-stream.
//
// Threading: a backend is created, opened, used and closed on the encoder thread only, except
// Probe(), which is a free function and may run on any thread (it builds a throwaway encoder).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "capture/frame.h"
#include "damage/rect.h"

extern "C" {
#include <libavutil/pixfmt.h>
}

struct AVFrame;

namespace wl::encode {

enum class Profile : uint8_t {
  kConstrainedBaseline = 0,  // 42e0xx: every browser's H.264 decoder takes it
  kMain = 1,                 // 4d00xx: in Chromium's and Firefox's receive lists too; CABAC, better at equal bitrate
};

/** What the pipeline asks of a backend. Values were validated in TypeScript. */
struct EncoderConfig {
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t bitrate_bps = 6'000'000;
  uint32_t fps = 60;               // the highest frame rate we will feed (max_fps); sizes the VBV
  Profile profile = Profile::kConstrainedBaseline;
  std::string preset = "ultrafast";  // x264 only
  bool intra_refresh = false;
  bool damage_roi = false;
  uint32_t threads = 0;            // 0: one slice thread per core
};

enum class Status : uint8_t {
  kOk = 0,      // zero or one access unit produced
  kReinit = 1,  // the input no longer fits (size/format change): close, reopen with a new config
  kError = 2,   // this backend is broken: the pipeline falls back to the next one
};

/** One frame in the format the backend asked for (InputFormat()), plus what the encoder may use. */
struct InputFrame {
  // The converted frame, refcounted (lavc backends send it as is: no copy inside libavcodec).
  AVFrame* av = nullptr;
  // Software planes (I420: 3, NV12: 2, BGR0: 1). Borrowed for the duration of Encode().
  const uint8_t* planes[3] = {nullptr, nullptr, nullptr};
  int strides[3] = {0, 0, 0};
  int64_t pts_90k = 0;             // strictly increasing, 90 kHz, from the capture timestamp
  const std::vector<damage::Rect>* damage = nullptr;  // changed since the previously encoded frame
  bool refresh = false;            // a re-encode of an unchanged frame (no damage)
  // A DMA-BUF frame for a backend with Caps().zero_copy_dmabuf (VA-API): the planes to import
  // (fds owned by the capture frame, alive during Encode()); `av` and `planes` are then unset.
  const capture::DmabufPlanes* dmabuf = nullptr;
  // The DMA-BUF's own size: the encoder's (cfg) size, or larger for a scaled rung (the VPP scales).
  uint32_t dmabuf_width = 0, dmabuf_height = 0;
};

/** One access unit in Annex-B form. */
struct EncodedUnit {
  std::vector<uint8_t> data;
  bool keyframe = false;           // contains an IDR slice
  int64_t pts_90k = 0;
};

struct Capabilities {
  bool bitrate_without_idr = false;  // SetBitrate() reconfigures in place (libx264, OpenH264)
  bool framerate_without_idr = false;
  bool roi = false;                  // honours region-of-interest side data
  bool intra_refresh = false;
  bool zero_copy_dmabuf = false;     // imports DMA-BUF frames without a CPU copy
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* Name() const = 0;
  /** The pixel format Encode() wants: AV_PIX_FMT_YUV420P, AV_PIX_FMT_NV12 or AV_PIX_FMT_BGR0. */
  virtual AVPixelFormat InputFormat() const = 0;
  virtual Capabilities Caps() const = 0;
  /** Opens for `config`; false + `error` when this backend cannot (no device, driver refused, ...). */
  virtual bool Open(const EncoderConfig& config, std::string* error) = 0;
  /** Encodes one frame (low-latency backends answer with its access unit at once). `out->data` is
   *  left empty when the encoder produced nothing for this frame. */
  virtual Status Encode(const InputFrame& in, bool force_idr, EncodedUnit* out, std::string* error) = 0;
  /** Returns false when the change needs a reopen (the pipeline then reopens with an IDR). */
  virtual bool SetBitrate(uint32_t bps) = 0;
  virtual bool SetFramerate(uint32_t fps) = 0;
  virtual void Close() = 0;
  /** Test hook: the next Encode() fails as a broken device would. */
  void InjectFault() { fault_ = true; }

 protected:
  bool TakeFault() {
    const bool f = fault_;
    fault_ = false;
    return f;
  }

 private:
  bool fault_ = false;
};

struct ProbeResult {
  std::string name;
  bool compiled = false;   // built into this addon
  bool available = false;  // a small encoder really opened here
  std::string reason;      // why not (or what was used: device path, library version)
  std::string device;
  Capabilities caps;
};

/** The backend names, in the default priority order. */
const std::vector<std::string>& BackendNames();
/** nullptr for an unknown name. */
std::unique_ptr<Backend> CreateBackend(const std::string& name);
/** Compiled in? device present? does a 256x144 encoder open and encode a frame? */
ProbeResult Probe(const std::string& name);

// Per-backend factories and probes (one .cc each).
std::unique_ptr<Backend> CreateX264Backend();
std::unique_ptr<Backend> CreateOpenH264Backend();
std::unique_ptr<Backend> CreateVaapiBackend();
std::unique_ptr<Backend> CreateNvencBackend();
/** Device checks that come before opening an encoder; false + reason when the device is absent. */
bool VaapiDevicePresent(std::string* device, std::string* reason);
bool NvencDevicePresent(std::string* reason);

/** "av_strerror" as a std::string. */
std::string AvError(int err);

}  // namespace wl::encode
