#pragma once
#include <napi.h>

namespace wl::damage {
/** Adds `diffTiles` (tests, benches) to the addon's exports. */
void InitBinding(Napi::Env env, Napi::Object exports);
}  // namespace wl::damage
