// The capture stage's frame handle and the interface the encoder (native, same addon, its own thread)
// uses to pull frames without going through JS.
//
// Ownership model
//   * A Frame is a copy of one PipeWire shared-memory buffer in memory the capture stream owns. The
//     pw_buffer itself is requeued at once: holding it would stall the producer (xdg-desktop-portal-wlr
//     has only a few buffers) and its mapping is only valid until the next renegotiation.
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

struct Frame {
  uint64_t seq = 0;              // 1, 2, ... per stream; gaps mean frames were replaced in the mailbox
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t stride = 0;           // bytes per row of `pixels` (tightly packed: width * 4)
  uint32_t spa_format = 0;       // enum spa_video_format
  std::string format_name;       // "BGRx", ...
  int64_t pts_ns = -1;           // the producer's SPA_META_Header pts, -1 when absent
  uint64_t process_ns = 0;       // CLOCK_MONOTONIC when PipeWire's process callback started
  uint64_t publish_ns = 0;       // CLOCK_MONOTONIC when the frame entered the mailbox
  std::vector<damage::Rect> damage;  // never empty for a published frame
  DamageSource damage_source = DamageSource::kFull;
  bool has_crop = false;         // SPA_META_VideoCrop: the producer's valid region inside the frame
  damage::Rect crop;
  std::vector<uint8_t> pixels;   // stride * height bytes

  const uint8_t* data() const { return pixels.data(); }
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
};

}  // namespace wl::capture
