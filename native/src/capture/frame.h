// The capture stage's frame handle and the interface the encoder (native, same addon, its own thread)
// uses to pull frames without going through JS.
//
// Ownership model
//   * DMA-BUF frames (capture negotiated SPA_DATA_DmaBuf, only with a GPU importer: see
//     capture/dmabuf.h) carry no pixels: `dmabuf` holds dup'ed fds of the producer's buffer planes
//     with their offsets, strides, DRM fourcc and modifier, closed when the last holder releases the
//     Frame. No CPU copy. The pw_buffer is requeued at once, unlike shared memory (nothing to save:
//     the dup'ed fds keep the memory alive without a copy, and the encoder imports it within a frame
//     time). Producer/consumer fences (SPA_META_SyncTimeline, PipeWire >= 1.2) are not
//     negotiated (Debian 12 has 0.3.65): implicit sync of the DMA-BUF is what orders the GPU work.
//   * A shared-memory Frame normally references the PipeWire buffer itself (no copy): `mapped` points
//     into the capture's own read-only mmap of the buffer's memfd, `stride` is the producer's, and
//     `hold` keeps the pw_buffer out of the producer's hands (it cannot write into it) until the last
//     holder releases the Frame; then the capture's loop thread requeues it. The mmap is the Frame's
//     own (held by `hold`), so the pixels stay readable after remove_buffer, a renegotiation or the
//     stream's close: the buffer is then simply not requeued. The capture holds a buffer only while the
//     producer keeps at least 2 (pw_capture.h kProducerMinFree; 8 are negotiated at 1080p); otherwise,
//     and for MemPtr buffers, the Frame is a copy in memory the capture stream owns (`pixels`, packed)
//     and the pw_buffer is requeued at once. A consumer must therefore not sit on frames it does not
//     need: every frame it keeps is a buffer the producer lacks (the encoder keeps its current and
//     last-encoded frame; a replaced mailbox slot releases its frame at once).
//     PipeWire 0.3.65 does not honour the hold between processes: the producer reuses its buffers in
//     turn whatever the consumer holds, so a held frame's pixels are only safe for about
//     n_buffers - 1 frame times after capture (~130 ms with 8 buffers at 60 fps), far longer than an
//     encoder takes to convert a frame. `intact()` says whether the buffer was given out again since
//     (then its pixels may be newer than the frame's metadata); readers that keep a frame longer (the
//     tile differ's reference, a refresh's re-conversion) check it.
//   * Once published a Frame is immutable and shared through std::shared_ptr<const Frame>. The capture
//     stream recycles a frame's pixel memory only when nobody else holds it (use_count() == 1 in its
//     pool), so a consumer may keep a frame as long as it likes; it only costs a pool slot.
//   * A Frame's own `damage` is relative to the frame published just before it.
//   * Each consumer (encoder) has its own one-slot mailbox (capture/mailbox.h): publishing a new frame
//     replaces an untaken one there (counted as "dropped" for that consumer) and merges their damage
//     into the slot, so what a consumer takes (LatestFrame::damage) covers everything changed since
//     the frame it took before, however many frames it missed. Several encoders (the main one and a
//     lower rung) read one source, each at its own pace.
//
// Encoder usage (thread of its own):
//     auto box = source->Subscribe();
//     for (;;) {
//       LatestFrame latest = box->Wait(std::chrono::milliseconds(100), stop);
//       if (!latest) { if (source->IsClosed()) break; else continue; }
//       encode(latest.frame->data(), latest.frame->stride, latest.damage, ...);
//     }
//     source->Unsubscribe(box);
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "damage/rect.h"

namespace wl::capture {

enum class DamageSource : uint8_t {
  kFull = 0,        // first frame after a (re)negotiation: everything is new
  kCompositor = 1,  // from the producer's SPA_META_VideoDamage
  kTiles = 2,       // from the native tile comparison against the previous frame
};

inline const char* DamageSourceName(DamageSource s) {
  switch (s) {
    case DamageSource::kFull: return "full";
    case DamageSource::kCompositor: return "compositor";
    case DamageSource::kTiles: return "tiles";
  }
  return "full";
}

/** The planes of a DMA-BUF frame. Owns its fds (each one dup'ed from the producer's buffer). */
struct DmabufPlanes {
  static constexpr uint32_t kMaxPlanes = 4;
  uint32_t drm_format = 0;        // DRM fourcc (drm_fourcc.h), e.g. DRM_FORMAT_XRGB8888 for SPA BGRx
  uint64_t modifier = 0;          // DRM format modifier; DRM_FORMAT_MOD_INVALID (2^56-1): implicit
  uint32_t n_planes = 0;
  int fds[kMaxPlanes] = {-1, -1, -1, -1};
  uint32_t offsets[kMaxPlanes] = {};
  uint32_t strides[kMaxPlanes] = {};
  DmabufPlanes() = default;
  DmabufPlanes(const DmabufPlanes&) = delete;
  DmabufPlanes& operator=(const DmabufPlanes&) = delete;
  ~DmabufPlanes() {
    for (int& fd : fds)
      if (fd >= 0) {
        ::close(fd);
        fd = -1;
      }
  }
};

struct Frame {
  uint64_t seq = 0;              // 1, 2, ... per stream; gaps mean frames were replaced in the mailbox
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t stride = 0;           // bytes per row of data(): width * 4 for `pixels`, the producer's otherwise
  uint32_t spa_format = 0;       // enum spa_video_format
  std::string format_name;       // "BGRx", ...
  int64_t pts_ns = -1;           // the producer's SPA_META_Header pts, -1 when absent
  uint64_t process_ns = 0;       // CLOCK_MONOTONIC when PipeWire's process callback started
  uint64_t publish_ns = 0;       // CLOCK_MONOTONIC when the frame entered the mailbox
  std::vector<damage::Rect> damage;  // never empty for a published frame
  DamageSource damage_source = DamageSource::kFull;
  bool has_crop = false;         // SPA_META_VideoCrop: the producer's valid region inside the frame
  damage::Rect crop;
  std::vector<uint8_t> pixels;   // stride * height bytes (empty for DMA-BUF and held-buffer frames)
  // Set for DMA-BUF frames: the pixels are in the producer's (GPU) buffer. `stride` is then plane 0's.
  std::shared_ptr<const DmabufPlanes> dmabuf;
  // A CPU mapping standing in for `pixels` (the encoder's software fallback for LINEAR DMA-BUFs:
  // encode/dmabuf_map.h); `mapping` keeps it mapped while the Frame lives.
  const uint8_t* mapped = nullptr;
  size_t mapped_size = 0;
  std::shared_ptr<const void> mapping;
  // Set when `mapped` is a PipeWire buffer the capture holds for this Frame (see above): releasing
  // the last reference gives the buffer back to the producer.
  std::shared_ptr<const void> hold;
  // How many times the capture has received the held buffer (bumped on every delivery) and the count
  // when this frame took it: equal while the producer has not given the buffer out again.
  std::shared_ptr<const std::atomic<uint64_t>> hold_deliveries;
  uint64_t hold_delivery = 0;

  const uint8_t* data() const { return mapped != nullptr ? mapped : pixels.data(); }
  size_t size() const { return mapped != nullptr ? mapped_size : pixels.size(); }
  bool is_dmabuf() const { return dmabuf != nullptr && mapped == nullptr; }
  bool holds_buffer() const { return hold != nullptr; }
  /** False once the producer got the held buffer back and delivered it again (see above). */
  bool intact() const { return hold_deliveries == nullptr || hold_deliveries->load(std::memory_order_acquire) == hold_delivery; }
};

using FramePtr = std::shared_ptr<const Frame>;

/** What a consumer takes out of the mailbox. */
struct LatestFrame {
  FramePtr frame;
  std::vector<damage::Rect> damage;  // changed since the frame this consumer took before (merged, capped)
  DamageSource damage_source = DamageSource::kFull;
  uint64_t frames_merged = 0;        // frames replaced in the slot since the last take
  explicit operator bool() const { return frame != nullptr; }
};

class FrameMailbox;

/** Implemented by the capture stream; the encoder depends on this interface only. Thread-safe. */
class LatestFrameSource {
 public:
  virtual ~LatestFrameSource() = default;
  /** Registers a consumer: its own mailbox, which gets every frame published from now on, seeded with
   *  the newest one. Closed at once (Wait returns nothing) when the source is closed. */
  virtual std::shared_ptr<FrameMailbox> Subscribe() = 0;
  /** Unregisters (and closes) a consumer's mailbox. Idempotent. */
  virtual void Unsubscribe(const std::shared_ptr<FrameMailbox>& mailbox) = 0;
  /** The single-consumer API (native tests): the source's own consumer, registered on first use.
   *  Takes the newest frame out of its mailbox, waiting up to `timeout` for one to arrive.
   *  Returns an empty LatestFrame on timeout and immediately once the source is closed. */
  virtual LatestFrame WaitLatest(std::chrono::nanoseconds timeout) = 0;
  /** Takes the newest frame if there is one, without waiting. */
  virtual LatestFrame TryTakeLatest() = 0;
  /** The newest published frame, whether or not it was taken (snapshots); does not touch the mailbox. */
  virtual FramePtr PeekLatest() const = 0;
  virtual bool IsClosed() const = 0;
  /** The consumer cannot use the DMA-BUF frames it gets (a software encoder took over and the
   *  modifier is not LINEAR, or the GPU import failed): renegotiate to shared memory. Asynchronous
   *  (the next frames may still be DMA-BUF); idempotent. Sources without DMA-BUF ignore it. */
  virtual void RequestSharedMemory(const std::string& /*reason*/) {}
};

}  // namespace wl::capture
