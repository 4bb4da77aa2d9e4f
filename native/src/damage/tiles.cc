#include "damage/tiles.h"

#include <algorithm>
#include <cstring>

namespace wl::damage {

size_t DiffTiles(const TileDiffInput& in, std::vector<Rect>* out) {
  out->clear();
  if (in.width == 0 || in.height == 0 || in.tile_size == 0) return 0;
  const uint32_t tile = in.tile_size;
  const uint32_t bpp = in.bytes_per_pixel;
  const uint32_t cols = (in.width + tile - 1) / tile;
  const size_t row_bytes = static_cast<size_t>(in.width) * bpp;
  const size_t tile_bytes = static_cast<size_t>(tile) * bpp;

  // Per-call scratch: a few hundred bytes at most, noise next to the compare itself.
  std::vector<uint8_t> dirty(cols);
  std::vector<Rect> active, next_active;  // rects whose bottom edge touches the current tile row
  size_t total_dirty = 0;

  for (uint32_t y0 = 0; y0 < in.height; y0 += tile) {
    const uint32_t band_h = std::min(tile, in.height - y0);
    std::fill(dirty.begin(), dirty.end(), 0);
    uint32_t band_dirty = 0;
    for (uint32_t y = y0; y < y0 + band_h; ++y) {
      const uint8_t* c = in.cur + static_cast<size_t>(y) * in.cur_stride;
      const uint8_t* p = in.prev + static_cast<size_t>(y) * in.prev_stride;
      if (in.dst != nullptr) std::memcpy(in.dst + static_cast<size_t>(y) * in.dst_stride, c, row_bytes);
      if (band_dirty == cols) continue;  // every tile of this row is already dirty: only the copy is left
      if (std::memcmp(c, p, row_bytes) == 0) continue;
      for (uint32_t col = 0; col < cols; ++col) {
        if (dirty[col]) continue;
        const size_t off = col * tile_bytes;
        const size_t len = std::min(tile_bytes, row_bytes - off);
        if (std::memcmp(c + off, p + off, len) != 0) {
          dirty[col] = 1;
          ++band_dirty;
        }
      }
    }
    total_dirty += band_dirty;

    // Runs of dirty tiles in this tile row; a run with the same x span as a rect ending right above
    // grows that rect, so a fully changed frame is one rect, not one per tile row.
    next_active.clear();
    for (uint32_t col = 0; col < cols;) {
      if (!dirty[col]) {
        ++col;
        continue;
      }
      uint32_t end = col;
      while (end < cols && dirty[end]) ++end;
      const uint32_t x = col * tile;
      const uint32_t w = std::min(end * tile, in.width) - x;
      auto above = std::find_if(active.begin(), active.end(),
                                [&](const Rect& r) { return r.x == x && r.width == w; });
      if (above != active.end()) {
        Rect grown = *above;
        grown.height += band_h;
        next_active.push_back(grown);
        active.erase(above);
      } else {
        next_active.push_back(Rect{x, y0, w, band_h});
      }
      col = end;
    }
    out->insert(out->end(), active.begin(), active.end());  // finished: nothing continues them
    active.swap(next_active);
  }
  out->insert(out->end(), active.begin(), active.end());
  return total_dirty;
}

}  // namespace wl::damage
