#pragma once
#include <napi.h>

#include <memory>

#include "capture/frame.h"

namespace wl::capture {
/** Adds `PipeWireCapture` (class) to the addon's exports. */
void InitBinding(Napi::Env env, Napi::Object exports);

/** The native frame source behind a JS PipeWireCapture (for the encoder thread, same addon), or
 *  nullptr when `value` is not one or it failed to start. The shared_ptr keeps the native stream's
 *  memory alive after close() and GC; once closed, WaitLatest returns at once and IsClosed is true. */
std::shared_ptr<LatestFrameSource> FrameSourceOf(Napi::Env env, Napi::Value value);
}  // namespace wl::capture
