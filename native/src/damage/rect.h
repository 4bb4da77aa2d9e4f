// Damage rectangles shared by the capture and (later) encode stages.
#pragma once

#include <cstdint>
#include <vector>

namespace wl::damage {

/** A rectangle in frame pixels. Always clipped to the frame it belongs to. */
struct Rect {
  uint32_t x = 0;
  uint32_t y = 0;
  uint32_t width = 0;
  uint32_t height = 0;
};

inline uint64_t Area(const Rect& r) { return static_cast<uint64_t>(r.width) * r.height; }

/** Sum of the areas (the rects of one damage list never overlap when they come from the tile differ;
 *  compositor rects may, so the ratio is capped at 1). */
inline double AreaRatio(const std::vector<Rect>& rects, uint32_t width, uint32_t height) {
  if (width == 0 || height == 0) return 0.0;
  uint64_t sum = 0;
  for (const Rect& r : rects) sum += Area(r);
  const double ratio = static_cast<double>(sum) / (static_cast<double>(width) * height);
  return ratio > 1.0 ? 1.0 : ratio;
}

/** Clips `r` to width x height; returns false if nothing is left. */
inline bool Clip(Rect* r, uint32_t width, uint32_t height) {
  if (r->x >= width || r->y >= height || r->width == 0 || r->height == 0) return false;
  if (r->width > width - r->x) r->width = width - r->x;
  if (r->height > height - r->y) r->height = height - r->y;
  return true;
}

inline Rect BoundingBox(const std::vector<Rect>& rects) {
  if (rects.empty()) return Rect{};
  uint32_t x0 = UINT32_MAX, y0 = UINT32_MAX, x1 = 0, y1 = 0;
  for (const Rect& r : rects) {
    if (r.x < x0) x0 = r.x;
    if (r.y < y0) y0 = r.y;
    if (r.x + r.width > x1) x1 = r.x + r.width;
    if (r.y + r.height > y1) y1 = r.y + r.height;
  }
  return Rect{x0, y0, x1 - x0, y1 - y0};
}

/** Appends `add` to `acc`; when the list grows past `max_rects` it collapses to its bounding box, so a
 *  damage list never grows without bound (an encoder treats it as a hint, not an exact region). */
inline void Accumulate(std::vector<Rect>* acc, const std::vector<Rect>& add, size_t max_rects) {
  acc->insert(acc->end(), add.begin(), add.end());
  if (acc->size() > max_rects) {
    const Rect box = BoundingBox(*acc);
    acc->assign(1, box);
  }
}

}  // namespace wl::damage
