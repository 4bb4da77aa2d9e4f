#pragma once
#include <napi.h>

namespace wl::capture {
/** Adds `PipeWireCapture` (class) to the addon's exports. */
void InitBinding(Napi::Env env, Napi::Object exports);
}  // namespace wl::capture
