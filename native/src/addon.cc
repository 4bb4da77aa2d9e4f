// wl_webrtc.node: the agent's one native addon. Each pipeline stage registers its own exports from
// native/src/<stage>/; the encoder (native/src/encode/) will add itself here the same way. The JS
// surface is described by native/index.d.ts and loaded by agent/native/addon.ts.
#include <malloc.h>
#include <napi.h>
#include <pipewire/pipewire.h>

#include <mutex>

#include "capture/capture_binding.h"
#include "damage/damage_binding.h"
#include "encode/encode_binding.h"
#include "srtp/srtp_binding.h"

namespace {

Napi::Object Versions(Napi::Env env) {
  Napi::Object v = Napi::Object::New(env);
  v.Set("pipewireLibrary", pw_get_library_version());
  v.Set("pipewireHeaders", pw_get_headers_version());
  v.Set("napi", NAPI_VERSION);
  return v;
}

// Hands the C heap's free pages back to the system (glibc malloc_trim). glibc keeps what a burst of
// viewers freed (OpenSSL, werift's buffers) in its arenas and trims only the top of the main one, so RSS
// stayed at its peak after the viewers left; malloc_trim also releases the free pages inside them.
Napi::Value TrimMemory(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Once per process, not per environment (worker threads load the addon again); never undone, since
  // pw_deinit would pull PipeWire out from under another environment's streams.
  static std::once_flag pw_once;
  std::call_once(pw_once, [] { pw_init(nullptr, nullptr); });
  exports.Set("versions", Versions(env));
  exports.Set("trimMemory", Napi::Function::New(env, TrimMemory, "trimMemory"));
  wl::capture::InitBinding(env, exports);
  wl::damage::InitBinding(env, exports);
  wl::encode::InitBinding(env, exports);
  wl::srtp::InitBinding(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(wl_webrtc, Init)
