// The one-slot "latest frame" mailbox between a frame producer (the PipeWire capture stream, or the
// encoder tests' and benches' FrameFeeder) and one consumer (an encoder thread). One implementation,
// so tests and benches exercise the same merge rules the capture uses. A producer serves several
// consumers (the main encoder and a lower rung, docs/streaming.md) through a FrameFanout: each consumer
// registers its own mailbox, so each has its own merged damage and its own drop count.
//   * Publishing over an untaken frame replaces it and merges its damage into the slot, so what the
//     consumer takes covers everything changed since its previous take, however many frames it missed.
//   * A full-damage frame on either side, or a size change, makes the merged damage the whole frame.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

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
      if (closed_) return false;
      if (slot_.frame != nullptr) {
        replaced = true;
        ++drops_;
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

  /** Takes the slot, waiting up to `timeout` for a frame; empty at once once `closed` is set (and Kick()),
   *  and empty at once after a Kick(): the consumer has a request to act on without a new frame. */
  LatestFrame Wait(std::chrono::nanoseconds timeout, const std::atomic<bool>& closed) {
    LatestFrame out;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, timeout, [&] { return slot_.frame != nullptr || kicked_ || closed.load() || closed_; });
      // A kick is consumed by the wake it caused (or made moot by a frame): one kick, one wake-up.
      const bool kicked = std::exchange(kicked_, false);
      if (closed.load() || closed_) return LatestFrame{};
      if (kicked && slot_.frame == nullptr) return LatestFrame{};
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
    cv_.wait(lock, [&] { return slot_.frame == nullptr || closed_ || stop(); });
  }

  /** Seeds an empty slot with `frame` as a full-damage frame (a consumer that joins a running source
   *  must not wait for the screen to change to get its first picture). */
  void Seed(const FramePtr& frame) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_ || frame == nullptr || slot_.frame != nullptr) return;
      slot_.frame = frame;
      slot_.damage.assign(1, damage::Rect{0, 0, frame->width, frame->height});
      slot_.damage_source = DamageSource::kFull;
      slot_.frames_merged = 0;
      latest_ = frame;
    }
    cv_.notify_all();
  }

  /** The consumer is gone (unregistered) or the source closed: empties the slot for good and wakes
   *  every waiter; Wait() returns nothing from now on, Publish() is ignored. */
  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      slot_ = LatestFrame{};
      latest_.reset();
    }
    cv_.notify_all();
  }

  bool IsClosed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }

  bool Empty() const {
    std::lock_guard<std::mutex> lock(mu_);
    return slot_.frame == nullptr;
  }

  /** Frames replaced in this slot before this consumer took them. */
  uint64_t Drops() const {
    std::lock_guard<std::mutex> lock(mu_);
    return drops_;
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

  /** Makes the consumer's current or next Wait() return at once, frame or not: a request it must act on
   *  now (a keyframe on a still screen, stopping) rather than at the end of its wait. The flag is set
   *  under the lock, so a consumer between its predicate check and its sleep cannot miss it (a bare
   *  notify could be lost there and cost a whole wait timeout). */
  void Kick() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      kicked_ = true;
    }
    cv_.notify_all();
  }

  /** Wakes every waiter so it re-checks its stop condition (a pacing producer in WaitEmpty). */
  void Wake() { cv_.notify_all(); }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  LatestFrame slot_;
  FramePtr latest_;
  bool closed_ = false;
  bool kicked_ = false;
  uint64_t drops_ = 0;
};

/**
 * One producer, several consumers: every published frame goes to every registered mailbox (each
 * merges damage and counts drops for its own consumer; a frame in several slots is one shared,
 * immutable Frame). A consumer registers when it starts and unregisters when it stops; its mailbox is
 * seeded with the newest frame so it starts at once on a static screen. Thread-safe.
 */
class FrameFanout {
 public:
  using MailboxPtr = std::shared_ptr<FrameMailbox>;

  /** A new consumer's mailbox, seeded with the newest frame; a closed mailbox once Close() ran. */
  MailboxPtr Subscribe() {
    auto m = std::make_shared<FrameMailbox>();
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) {
      m->Close();
      return m;
    }
    m->Seed(latest_);
    boxes_.push_back(m);
    return m;
  }

  /** Unregisters and closes `m` (waking its consumer). Idempotent. */
  void Unsubscribe(const MailboxPtr& m) {
    if (m == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      boxes_.erase(std::remove(boxes_.begin(), boxes_.end(), m), boxes_.end());
    }
    m->Close();
  }

  /** Puts `frame` in every registered mailbox. Returns how many of them had an untaken frame replaced. */
  size_t Publish(const FramePtr& frame) {
    std::vector<MailboxPtr> boxes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return 0;
      latest_ = frame;
      boxes = boxes_;
    }
    size_t replaced = 0;
    for (const MailboxPtr& m : boxes)
      if (m->Publish(frame)) ++replaced;
    return replaced;
  }

  /** The newest published frame, taken or not. */
  FramePtr Peek() const {
    std::lock_guard<std::mutex> lock(mu_);
    return latest_;
  }

  size_t Consumers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return boxes_.size();
  }

  /** Blocks until a consumer is registered and every registered mailbox is empty, or `stop()`. With no
   *  consumer yet this polls (1 ms): only the bench's "as fast as the encoder" player waits here. */
  template <class Stop>
  void WaitEmpty(Stop stop) {
    while (!stop()) {
      std::vector<MailboxPtr> boxes;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (closed_) return;
        boxes = boxes_;
      }
      if (boxes.empty()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      for (const MailboxPtr& m : boxes) m->WaitEmpty(stop);
      bool all_empty = true;
      for (const MailboxPtr& m : boxes) all_empty = all_empty && (m->Empty() || m->IsClosed());
      if (all_empty) return;
    }
  }

  /** Wakes every consumer so it re-checks its stop condition. */
  void Wake() {
    std::vector<MailboxPtr> boxes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      boxes = boxes_;
    }
    for (const MailboxPtr& m : boxes) m->Wake();
  }

  /** The source closed: every mailbox is closed (consumers wake and see it), new ones start closed,
   *  and the newest frame is forgotten. */
  void Close() {
    std::vector<MailboxPtr> boxes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      latest_.reset();
      boxes.swap(boxes_);
    }
    for (const MailboxPtr& m : boxes) m->Close();
  }

 private:
  mutable std::mutex mu_;
  std::vector<MailboxPtr> boxes_;
  FramePtr latest_;
  bool closed_ = false;
};

/** A source's own consumer behind LatestFrameSource::WaitLatest/TryTakeLatest (the single-consumer
 *  API the native tests use): registered on first use, so a source nobody reads that way counts no
 *  drops for it. */
class DefaultConsumer {
 public:
  FrameFanout::MailboxPtr Get(FrameFanout& fanout) {
    std::lock_guard<std::mutex> lock(mu_);
    if (box_ == nullptr) box_ = fanout.Subscribe();
    return box_;
  }

 private:
  std::mutex mu_;
  FrameFanout::MailboxPtr box_;
};

}  // namespace wl::capture
