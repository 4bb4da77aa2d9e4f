#pragma once
#include <napi.h>

namespace wl::srtp {
/** Adds `SrtpGcmSealer` (SRTP AEAD_AES_128_GCM packet encryption with one cached key) to the addon's exports. */
void InitBinding(Napi::Env env, Napi::Object exports);
}  // namespace wl::srtp
