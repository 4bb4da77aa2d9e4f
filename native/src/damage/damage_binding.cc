// diffTiles(prev, cur, width, height, stride, tileSize[, dst]): the tile differ on two JS buffers, for the
// bench and tests. The capture stage calls DiffTiles directly (fused with its frame copy).
#include "damage/damage_binding.h"

#include <time.h>

#include "damage/tiles.h"

namespace wl::damage {
namespace {

uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

Napi::Value DiffTilesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // Sizes were validated in TS (agent/capture/tiles.ts); this check only keeps a wrong call from
  // reading past a buffer.
  auto prev = info[0].As<Napi::Buffer<uint8_t>>();
  auto cur = info[1].As<Napi::Buffer<uint8_t>>();
  TileDiffInput in;
  in.width = info[2].As<Napi::Number>().Uint32Value();
  in.height = info[3].As<Napi::Number>().Uint32Value();
  in.prev_stride = in.cur_stride = info[4].As<Napi::Number>().Uint32Value();
  in.tile_size = info[5].As<Napi::Number>().Uint32Value();
  const size_t need = in.height == 0 ? 0 : in.cur_stride * (in.height - 1) + static_cast<size_t>(in.width) * 4;
  if (in.tile_size == 0 || in.cur_stride < static_cast<size_t>(in.width) * 4 || prev.Length() < need || cur.Length() < need)
    throw Napi::RangeError::New(env, "diffTiles: buffers too small for width/height/stride, or tileSize 0");
  in.prev = prev.Data();
  in.cur = cur.Data();
  if (info.Length() > 6 && info[6].IsBuffer()) {
    auto dst = info[6].As<Napi::Buffer<uint8_t>>();
    if (dst.Length() < static_cast<size_t>(in.width) * 4 * in.height) throw Napi::RangeError::New(env, "diffTiles: dst too small");
    in.dst = dst.Data();
    in.dst_stride = static_cast<size_t>(in.width) * 4;
  }
  std::vector<Rect> rects;
  const uint64_t t0 = NowNs();
  const size_t dirty = DiffTiles(in, &rects);
  const uint64_t t1 = NowNs();
  Napi::Object o = Napi::Object::New(env);
  Napi::Array a = Napi::Array::New(env, rects.size());
  for (size_t i = 0; i < rects.size(); ++i) {
    Napi::Object r = Napi::Object::New(env);
    r.Set("x", rects[i].x);
    r.Set("y", rects[i].y);
    r.Set("width", rects[i].width);
    r.Set("height", rects[i].height);
    a.Set(static_cast<uint32_t>(i), r);
  }
  o.Set("rects", a);
  o.Set("dirtyTiles", Napi::Number::New(env, static_cast<double>(dirty)));
  o.Set("elapsedNs", Napi::Number::New(env, static_cast<double>(t1 - t0)));
  return o;
}

}  // namespace

void InitBinding(Napi::Env env, Napi::Object exports) { exports.Set("diffTiles", Napi::Function::New(env, DiffTilesJs, "diffTiles")); }

}  // namespace wl::damage
