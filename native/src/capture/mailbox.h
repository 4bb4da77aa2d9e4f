// The one-slot "latest frame" mailbox between a frame producer (the PipeWire capture stream, or the
// encoder tests' and benches' FrameFeeder) and its consumer (the encoder thread). One implementation,
// so tests and benches exercise the same merge rules the capture uses.
//   * Publishing over an untaken frame replaces it and merges its damage into the slot, so what the
//     consumer takes covers everything changed since its previous take, however many frames it missed.
//   * A full-damage frame on either side, or a size change, makes the merged damage the whole frame.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <utility>

#include "capture/frame.h"
#include "damage/rect.h"

namespace wl::capture {

class FrameMailbox {
 public:
  /** Beyond this many rects, merged damage collapses to a bounding box (damage::Accumulate). */
  static constexpr size_t kMaxRects = 64;

  /** Puts `frame` in the slot. Returns true when an untaken frame was replaced (a drop). */
  bool Publish(const FramePtr& frame) {
    bool replaced = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (slot_.frame != nullptr) {
        replaced = true;
        ++slot_.frames_merged;
        if (slot_.damage_source == DamageSource::kFull || frame->damage_source == DamageSource::kFull ||
            slot_.frame->width != frame->width || slot_.frame->height != frame->height) {
          slot_.damage.assign(1, damage::Rect{0, 0, frame->width, frame->height});
          slot_.damage_source = DamageSource::kFull;
        } else {
          damage::Accumulate(&slot_.damage, frame->damage, kMaxRects);
          slot_.damage_source = frame->damage_source;
        }
      } else {
        slot_.damage = frame->damage;
        slot_.damage_source = frame->damage_source;
        slot_.frames_merged = 0;
      }
      slot_.frame = frame;
      latest_ = frame;
    }
    cv_.notify_all();
    return replaced;
  }

  /** Takes the slot, waiting up to `timeout` for a frame; empty at once once `closed` is set (and Wake()). */
  LatestFrame Wait(std::chrono::nanoseconds timeout, const std::atomic<bool>& closed) {
    LatestFrame out;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, timeout, [&] { return slot_.frame != nullptr || closed.load(); });
      if (closed.load()) return LatestFrame{};
      out = std::exchange(slot_, LatestFrame{});
    }
    cv_.notify_all();  // a pacing producer waits for the slot to empty
    return out;
  }

  LatestFrame TryTake() {
    LatestFrame out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      out = std::exchange(slot_, LatestFrame{});
    }
    cv_.notify_all();
    return out;
  }

  /** The newest published frame, taken or not. */
  FramePtr Peek() const {
    std::lock_guard<std::mutex> lock(mu_);
    return latest_;
  }

  /** Blocks until the slot is empty or `stop()` (checked under the lock) says to give up. */
  template <class Stop>
  void WaitEmpty(Stop stop) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return slot_.frame == nullptr || stop(); });
  }

  /** Empties the slot (and forgets the newest frame too with `forget_latest`), waking every waiter. */
  void Clear(bool forget_latest) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      slot_ = LatestFrame{};
      if (forget_latest) latest_.reset();
    }
    cv_.notify_all();
  }

  /** Wakes every waiter so it re-checks its stop condition (closing). */
  void Wake() { cv_.notify_all(); }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  LatestFrame slot_;
  FramePtr latest_;
};

}  // namespace wl::capture
