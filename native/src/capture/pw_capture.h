// PipeWire screen-capture consumer: one pw_thread_loop, context, core and pw_stream per capture.
// Pure C++ (no N-API): the JS binding (capture_binding.cc) and the future encoder both sit on top.
//
// Threads: every PipeWire callback here (state, param_changed, process) runs on this capture's own
// pw_thread_loop thread, not on PipeWire's real-time data thread, because the stream is connected
// without PW_STREAM_FLAG_RT_PROCESS. That is what makes copying a frame inside `process` acceptable:
// it delays only our own loop, never the graph. `process` still takes the newest buffer and requeues
// the older ones at once, so a slow pass cannot build a backlog (the pipewiresrc trap in the notes).
//
// Held buffers (shared memory, no copy): a published frame normally references the pw_buffer's memory
// itself and the buffer goes back to the producer when the last holder (mailboxes, encoders, the tile
// differ's reference) drops the frame. frame.h ("Ownership") has the rules; in short:
//   * the frame reads our own read-only mmap of the buffer's memfd (made at add_buffer), not
//     PipeWire's mapping, so it stays valid after remove_buffer, a renegotiation or Close();
//   * the last release (any thread) hands the buffer to a BufferReleaser, which wakes the loop thread
//     (an eventfd source); only the loop thread requeues, and never a buffer removed meanwhile;
//   * a buffer is held only if the producer keeps at least kProducerMinFree buffers; otherwise, and for
//     MemPtr buffers (no fd to map), the frame is copied into the pool as before;
//   * PipeWire 0.3.65 does not wait for us: between processes the producer gets every buffer back one
//     cycle after sending it, whether we queued it or not, and reuses its buffers in turn (seen with
//     the test producer: a held buffer came back 8 frames later with new pixels). So a held frame is
//     only guaranteed for about n_buffers - 1 frame times (8 at 1080p: ~130 ms at 60 fps); each
//     buffer's delivery count tells whether it was given out again (Frame::intact()), and the tile
//     differ's reference, the one frame kept arbitrarily long, is checked before it is used.
#pragma once

#include <pipewire/pipewire.h>
#include <spa/param/video/format-utils.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "capture/dmabuf.h"
#include "capture/mailbox.h"
#include "capture/frame.h"
#include "damage/rect.h"

namespace wl::capture {

enum class StreamState { kConnecting, kPaused, kStreaming, kError, kClosed };
const char* StreamStateName(StreamState s);

/** Buffers the producer must keep (not held by our frames): below this a frame is copied instead. */
constexpr uint32_t kProducerMinFree = 2;

struct CaptureOptions {
  int fd = -1;                    // the portal's PipeWire remote fd (borrowed: we dup it); -1: default daemon
  uint32_t node_id = PW_ID_ANY;   // the portal's stream node id
  uint32_t tile_size = 64;        // tile differ granularity when there is no compositor damage
  std::string name = "wl-webrtc-capture";
  // DMA-BUF (zero copy to a GPU encoder): the render node TS chose (the first usable encoder is
  // VA-API and the node exists); empty: shared memory only, `dmabuf_off_reason` says why.
  std::string dmabuf_device;
  std::string dmabuf_off_reason;
  // Shared memory: publish frames that reference the producer's buffer (held until released) instead
  // of a copy (saves ~1.5 ms per 1080p frame); docs/architecture.md "Held buffers". (It was off for a
  // while after an abort in test/capture/desktop.test.ts; that was usocket's, not this code's:
  // agent/util/usocket-guard.ts.)
  bool hold_buffers = true;
};

struct NegotiatedFormat {
  bool valid = false;
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t stride = 0;            // of the producer's buffers (0 until the first buffer arrives)
  uint32_t spa_format = 0;
  std::string format_name;
  std::string buffer_type;        // "memfd" | "memptr" | "dmabuf" ("" until the first buffer)
  uint32_t buffers = 0;           // buffers negotiated with the producer (0 until they are added)
  bool dmabuf = false;            // the format carries a modifier: DMA-BUF buffers were asked for
  uint64_t modifier = 0;          // the producer's fixated DRM modifier (dmabuf only)
  uint32_t framerate_num = 0;
  uint32_t framerate_den = 1;
  uint32_t max_framerate_num = 0;
  uint32_t max_framerate_den = 1;
};

struct Counters {
  uint64_t frames_received = 0;   // buffers processed that carried a usable frame
  uint64_t frames_delivered = 0;  // frames published to the mailbox (non-zero damage)
  uint64_t frames_dropped = 0;    // published frames that replaced an untaken one in some consumer's mailbox
  uint64_t frames_unchanged = 0;  // frames with zero damage: not published, nobody woken
  uint64_t frames_empty = 0;      // buffers without data (e.g. cursor-only updates)
  uint64_t frames_corrupted = 0;  // buffers flagged corrupted or with an impossible size
  uint64_t buffers_skipped = 0;   // older buffers requeued unseen because a newer one was queued
  uint64_t frames_no_slot = 0;    // frames lost because every pool buffer was held by consumers
  uint64_t frames_held = 0;       // published frames that reference the producer's buffer (no copy)
  uint64_t frames_copied = 0;     // published shared-memory frames copied into the pool
  uint64_t frames_copied_short = 0;  // of those: copied because holding would leave the producer < kProducerMinFree
  uint64_t buffers_held = 0;      // now: buffers held by frames (not queued back to the producer)
  uint64_t buffers_held_max = 0;  // the most held at once
  uint64_t buffers_removed_held = 0;  // buffers PipeWire removed while a frame held them
  uint64_t buffers_redelivered_held = 0;  // a held buffer came back from the producer (frame.h: Frame::intact)
  uint64_t reference_lost = 0;    // the tile differ's held reference was overwritten: a full frame instead
  uint64_t renegotiations = 0;    // SPA_PARAM_Format changes
};

/** process-callback entry -> frame in the mailbox, in microseconds. */
struct Timing {
  static constexpr std::array<double, 8> kBucketsUs = {250, 500, 1000, 2000, 4000, 8000, 16000, 32000};
  uint64_t count = 0;
  double min_us = 0, max_us = 0, sum_us = 0;
  std::array<uint64_t, kBucketsUs.size() + 1> buckets{};  // last: >= 32 ms
  void Add(double us);
};

struct CursorInfo {
  bool present = false;           // a valid SPA_META_Cursor was seen
  uint32_t id = 0;
  int32_t x = 0, y = 0;
  int32_t hotspot_x = 0, hotspot_y = 0;
  uint32_t shape_width = 0, shape_height = 0;
  uint64_t shape_serial = 0;      // bumps each time a new bitmap arrives
  std::vector<uint8_t> shape_rgba;  // shape_width * shape_height * 4, RGBA
};

struct Snapshot {
  StreamState state = StreamState::kConnecting;
  std::string message;
  NegotiatedFormat format;
  Counters counters;
  Timing timing;
  std::vector<damage::Rect> last_damage;
  double last_damage_ratio = 0;
  DamageSource last_damage_source = DamageSource::kFull;
  uint64_t last_seq = 0;
  CursorInfo cursor;
  bool dmabuf_offered = false;
  std::string dmabuf_reason;
};

/** Notifications out of the capture thread. Implementations must be cheap and must not block. */
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void OnStateChanged(StreamState state, const std::string& message) = 0;
  virtual void OnFormatChanged(const NegotiatedFormat& format) = 0;
  virtual void OnFrameAvailable(const FramePtr& frame) = 0;
  /** Cursor metadata moved or changed shape (also when the frame itself did not change). */
  virtual void OnCursorChanged(const CursorInfo& cursor) = 0;
};

struct BufferSlot;
class BufferReleaser;

class PipeWireCapture final : public LatestFrameSource {
 public:
  /** Connects and starts the stream; returns nullptr and sets `error` when PipeWire cannot be reached. */
  static std::unique_ptr<PipeWireCapture> Create(const CaptureOptions& options, EventSink* sink, std::string* error);
  ~PipeWireCapture() override;
  PipeWireCapture(const PipeWireCapture&) = delete;
  PipeWireCapture& operator=(const PipeWireCapture&) = delete;

  /** Disconnects the stream, stops and joins the loop thread, frees PipeWire objects. Idempotent;
   *  after it returns no EventSink call is made any more. Must not be called on the loop thread. */
  void Close();
  Snapshot GetSnapshot() const;

  std::shared_ptr<FrameMailbox> Subscribe() override { return fanout_.Subscribe(); }
  void Unsubscribe(const std::shared_ptr<FrameMailbox>& m) override { fanout_.Unsubscribe(m); }
  LatestFrame WaitLatest(std::chrono::nanoseconds timeout) override;
  LatestFrame TryTakeLatest() override;
  FramePtr PeekLatest() const override;
  bool IsClosed() const override { return closed_.load(); }
  void RequestSharedMemory(const std::string& reason) override;

 private:
  PipeWireCapture(const CaptureOptions& options, EventSink* sink);
  bool Start(std::string* error);

  static void OnCoreError(void* data, uint32_t id, int seq, int res, const char* message);
  static void OnStreamStateChanged(void* data, enum pw_stream_state old, enum pw_stream_state state, const char* error);
  static void OnStreamParamChanged(void* data, uint32_t id, const struct spa_pod* param);
  static void OnStreamProcess(void* data);
  static void OnStreamAddBuffer(void* data, struct pw_buffer* b);
  static void OnStreamRemoveBuffer(void* data, struct pw_buffer* b);
  static void OnBuffersReleased(void* data, uint64_t count);
  /** Requeues the buffers whose last frame was released (loop thread). */
  void RequeueReleased();
  /** Whether a frame may reference `b` instead of copying it; counts the reason when it may not. */
  bool CanHold(struct pw_buffer* b, const struct spa_data* d);
  void SetHeld(int delta);

  void SetState(StreamState state, const std::string& message);
  void HandleFormat(const struct spa_pod* param);
  /** Returns true when the published frame holds `b` (the caller must not requeue it then). */
  bool ProcessBuffer(struct pw_buffer* b, uint64_t t0, std::vector<damage::Rect>* carried, bool* carried_unknown);
  void FillFromMetas(Frame* frame, struct spa_buffer* buf, struct spa_meta_header* header, uint64_t t0, uint32_t width,
                     uint32_t height, std::vector<damage::Rect>* compositor) const;
  void ProcessDmabuf(struct spa_buffer* buf, struct spa_meta_header* header, uint64_t t0, std::vector<damage::Rect>* carried,
                     bool* carried_unknown);
  /** EnumFormat params from offer_ (DMA-BUF first, shared memory last). Loop lock held. */
  uint32_t BuildFormats(struct spa_pod_builder* b, const struct spa_pod** params, uint32_t max);
  void ReadCursor(struct spa_buffer* buf);
  static void ReadCursorLocked(const struct spa_meta_cursor* mc, uint32_t meta_size, CursorInfo* out);
  std::shared_ptr<Frame> AcquirePoolFrame();
  void Publish(const std::shared_ptr<Frame>& frame, uint64_t t0);

  const CaptureOptions options_;
  EventSink* const sink_;

  struct pw_thread_loop* loop_ = nullptr;
  struct pw_context* context_ = nullptr;
  struct pw_core* core_ = nullptr;
  struct pw_stream* stream_ = nullptr;
  struct spa_hook core_listener_ {};
  struct spa_hook stream_listener_ {};
  std::atomic<bool> closed_{false};

  // Loop thread, or any thread holding the loop lock (RequestSharedMemory).
  DmabufOffer offer_;
  bool dmabuf_negotiated_ = false;

  // Loop-thread only.
  struct spa_video_info_raw raw_ {};
  bool have_format_ = false;
  uint32_t n_buffers_ = 0;  // buffers the stream holds now (add_buffer - remove_buffer); info_mu_ too
  std::vector<std::shared_ptr<BufferSlot>> slots_;  // one per added buffer (pw_buffer::user_data points here)
  uint32_t held_ = 0;       // slots held by frames, not yet requeued
  std::shared_ptr<BufferReleaser> releaser_;  // shared with every hold: outlives this object if need be
  struct spa_source* release_event_ = nullptr;
  std::vector<std::shared_ptr<Frame>> pool_;
  std::shared_ptr<Frame> last_published_;   // the tile differ's reference frame
  std::vector<damage::Rect> carry_damage_;  // compositor damage of buffers requeued unseen
  bool carry_unknown_ = false;              // a requeued buffer had no damage info: fall back to tiles
  uint64_t seq_ = 0;

  FrameFanout fanout_;
  DefaultConsumer default_consumer_;

  // What GetSnapshot reports.
  mutable std::mutex info_mu_;
  Snapshot info_;
};

}  // namespace wl::capture
