#pragma once
#include <napi.h>

namespace wl::encode {
/** Adds `NativeVideoEncoder`, `FrameFeeder` and `probeEncoders` to the addon's exports. */
void InitBinding(Napi::Env env, Napi::Object exports);
}  // namespace wl::encode
