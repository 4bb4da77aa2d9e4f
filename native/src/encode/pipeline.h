// The encoder thread: capture mailbox (LatestFrameSource) -> convert once -> encode -> deliver.
//
//  * Newest frame wins: the thread takes the newest frame from the capture mailbox when it is free;
//    frames replaced there meanwhile are counted as dropped ("busy"), never queued. A max_fps limit
//    holds at most one pending frame, replaced by newer ones ("rate").
//  * Frames with zero damage are not encoded. When nothing changed for refresh_interval_ms the last
//    frame is encoded again as a normal P frame (quality converges, late joiners and lossy links
//    recover without waiting for the next change).
//  * Keyframe requests, bitrate and frame-rate changes and fault injection come from JS through
//    atomics and are applied between frames.
//  * Fallback: when a backend cannot open or fails mid-stream, it is closed, the next backend of the
//    priority list is opened, the frame is encoded again with an IDR, and the sink hears {from, to}.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "capture/frame.h"
#include "encode/backend.h"
#include "encode/convert.h"

namespace wl::encode {

struct PipelineConfig {
  std::vector<std::string> backends;  // priority order
  EncoderConfig encoder;              // width/height: initial; followed frame by frame
  uint32_t refresh_interval_ms = 1000;  // 0: never
  // Bench only: no max_fps pacing and no real-frame-rate adaptation, so the encoder runs with exactly
  // the settings the ffmpeg CLI gets (constant nominal rate) and as fast as frames come.
  bool benchmark = false;
};

/** µs histogram with fixed buckets (the TS side turns it into a prom-client histogram). */
struct Histogram {
  static constexpr std::array<double, 11> kBoundsUs = {250, 500, 1000, 2000, 4000, 8000, 16000, 33000, 66000, 133000, 266000};
  uint64_t count = 0;
  double sum_us = 0, min_us = 0, max_us = 0;
  std::array<uint64_t, kBoundsUs.size() + 1> buckets{};
  void Add(double us);
};

struct PipelineStats {
  uint64_t frames_in = 0;           // frames taken from the capture mailbox
  uint64_t frames_encoded = 0;      // access units delivered (refreshes included)
  uint64_t frames_refresh = 0;      // of which re-encodes of an unchanged screen
  uint64_t keyframes = 0;
  uint64_t keyframe_requests = 0;
  uint64_t dropped_busy = 0;        // replaced in the capture mailbox while the encoder was busy
  uint64_t dropped_rate = 0;        // replaced while waiting for the max_fps slot
  uint64_t dropped_queue_full = 0;  // encoded, but JS had not taken the previous ones: dropped + IDR
  uint64_t dropped_unchanged = 0;   // zero damage: not encoded
  uint64_t dropped_failed = 0;      // lost to an encoder failure (no backend could take it)
  uint64_t bytes_out = 0;
  uint64_t fallbacks = 0;
  uint64_t reinits = 0;             // reopened for a size change or a non-in-place rate change
  uint64_t bitrate_changes = 0;
  std::string backend;
  uint32_t bitrate_bps = 0;
  uint32_t fps = 0;
  uint32_t width = 0, height = 0;
  std::string profile_level_id;
  Histogram wait;                   // capture publish -> encoder picks the frame up
  Histogram convert;                // pixel format conversion
  Histogram encode;                 // backend Encode()
};

/** One encoded access unit on its way to JS. */
struct EncodedOutput {
  std::vector<uint8_t> data;  // Annex-B; IDRs start with SPS + PPS
  bool keyframe = false;
  bool refresh = false;
  uint64_t seq = 0;           // 1, 2, ...; gaps: dropped after encoding (queue full)
  uint64_t source_seq = 0;    // the capture frame's seq
  uint32_t width = 0, height = 0;
  double capture_wall_ms = 0;
  double encode_us = 0;
  double wait_us = 0;         // capture publish -> encoder picked it up
  double convert_us = 0;
  int64_t pts_90k = 0;
  std::string backend;
};

struct PipelineEvent {
  enum class Kind { kFormat, kFallback, kError, kEnded } kind = Kind::kFormat;
  std::string backend;
  std::string profile_level_id;
  uint32_t width = 0, height = 0;
  std::string from, to, reason;  // fallback; reason/error message
};

/** Where the pipeline delivers. Called on the encoder thread; must not block. */
class PipelineSink {
 public:
  virtual ~PipelineSink() = default;
  /** false: the bounded queue to JS is full (the unit is dropped, the next frame will be an IDR). */
  virtual bool Deliver(std::unique_ptr<EncodedOutput> out) = 0;
  virtual void Notify(PipelineEvent event) = 0;
};

class Pipeline {
 public:
  /** Opens the first backend of the list that works (falling back as at run time) and encodes a
   *  test frame to learn the real profile-level-id. Returns nullptr + error when none opens. */
  static std::unique_ptr<Pipeline> Create(std::shared_ptr<capture::LatestFrameSource> source, const PipelineConfig& config,
                                          PipelineSink* sink, std::string* error, std::vector<PipelineEvent>* open_events);
  ~Pipeline();
  void Start();
  /** Stops and joins the thread, closes the backend. Idempotent. */
  void Stop();

  void RequestKeyframe() { keyframe_.store(true); }
  void SetBitrate(uint32_t bps) { pending_bitrate_.store(bps); }
  void SetFramerate(uint32_t fps) { pending_fps_.store(fps); }
  void InjectFault() { fault_.store(true); }
  PipelineStats Stats() const;
  std::string BackendName() const;
  std::string ProfileLevelId() const;

 private:
  Pipeline(std::shared_ptr<capture::LatestFrameSource> source, const PipelineConfig& config, PipelineSink* sink);
  void Run();
  bool OpenFrom(size_t index, const std::string& failed_reason, std::string* error, std::vector<PipelineEvent>* events);
  void ApplyControls();
  void AdaptRate(uint64_t now, bool refresh);
  /** Converts and encodes; handles reinit and fallback. */
  /** `full_damage`: the damage source said everything changed (convert every row). */
  void EncodeFrame(const capture::FramePtr& frame, const std::vector<damage::Rect>* damage, bool full_damage, bool refresh,
                   uint64_t wait_start_ns);
  void Emit(PipelineEvent e);

  const std::shared_ptr<capture::LatestFrameSource> source_;
  PipelineConfig config_;
  PipelineSink* const sink_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> keyframe_{false};
  std::atomic<uint32_t> pending_bitrate_{0};
  std::atomic<uint32_t> pending_fps_{0};
  std::atomic<bool> fault_{false};

  // Encoder thread only (and Create, before the thread starts).
  std::unique_ptr<Backend> backend_;
  size_t backend_index_ = 0;
  bool force_idr_ = true;
  // A keyframe was requested from JS and not yet made: on a still screen it is made from the last picture.
  bool idr_requested_ = false;
  // The backend's input picture: persistent, converted only where the damage says (refreshes reuse it).
  Converter converter_;
  int64_t last_pts_ = -1;
  uint64_t base_ns_ = 0;
  uint64_t out_seq_ = 0;
  std::vector<uint8_t> sps_, pps_;
  std::string plid_;
  double rc_fps_ = 60;               // the frame rate the backend was last told
  double ema_dt_ = 0;                // smoothed interval between real frames, s
  uint64_t last_encode_ns_ = 0;

  mutable std::mutex stats_mu_;
  PipelineStats stats_;
};

}  // namespace wl::encode
