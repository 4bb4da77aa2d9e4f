// Cisco's OpenH264 through its own C++ API (libopenh264-dev): a second, independent software
// encoder. It makes fallback real on machines without a GPU, and it is the encoder browsers
// themselves use for H.264, so its streams are the safest bet for odd decoders. Constrained
// baseline only (CAVLC); screen-content mode.
#include <wels/codec_api.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "encode/backend.h"

extern "C" {
#include <libavutil/frame.h>
}

namespace wl::encode {
namespace {

class OpenH264Backend final : public Backend {
 public:
  ~OpenH264Backend() override { OpenH264Backend::Close(); }
  const char* Name() const override { return "openh264"; }
  AVPixelFormat InputFormat() const override { return AV_PIX_FMT_YUV420P; }
  Capabilities Caps() const override {
    Capabilities c;
    c.bitrate_without_idr = true;    // ENCODER_OPTION_BITRATE between frames
    c.framerate_without_idr = true;  // ENCODER_OPTION_FRAME_RATE
    return c;
  }

  bool Open(const EncoderConfig& config, std::string* error) override {
    Close();
    cfg_ = config;
    if (WelsCreateSVCEncoder(&enc_) != 0 || enc_ == nullptr) {
      *error = "openh264: WelsCreateSVCEncoder failed";
      enc_ = nullptr;
      return false;
    }
    int trace = WELS_LOG_ERROR;  // its warnings go to stderr, not our logger
    enc_->SetOption(ENCODER_OPTION_TRACE_LEVEL, &trace);
    SEncParamExt p;
    std::memset(&p, 0, sizeof(p));
    enc_->GetDefaultParams(&p);
    p.iUsageType = SCREEN_CONTENT_REAL_TIME;
    p.iPicWidth = static_cast<int>(config.width);
    p.iPicHeight = static_cast<int>(config.height);
    p.iTargetBitrate = static_cast<int>(config.bitrate_bps);
    p.iMaxBitrate = static_cast<int>(config.bitrate_bps);
    p.iRCMode = RC_BITRATE_MODE;
    p.fMaxFrameRate = static_cast<float>(config.fps);
    p.iTemporalLayerNum = 1;
    p.iSpatialLayerNum = 1;
    p.iComplexityMode = LOW_COMPLEXITY;
    p.uiIntraPeriod = 0;  // infinite GOP: IDRs only on request (ForceIntraFrame)
    p.iNumRefFrame = 1;
    p.eSpsPpsIdStrategy = CONSTANT_ID;  // a browser joining late must find the same ids
    p.bPrefixNalAddingCtrl = false;
    p.bEnableSSEI = false;
    p.iEntropyCodingModeFlag = 0;
    // Never drop a frame to meet the budget: the pipeline already dropped what it could not encode.
    p.bEnableFrameSkip = false;
    p.bEnableDenoise = false;
    // Screen-content mode has neither (OpenH264 turns them off with a warning).
    p.bEnableBackgroundDetection = false;
    p.bEnableAdaptiveQuant = false;
    p.bEnableSceneChangeDetect = false;  // a scene change would insert an IDR
    p.bEnableLongTermReference = false;
    const unsigned cores = config.threads ? config.threads : std::max(1u, std::thread::hardware_concurrency());
    p.iMultipleThreadIdc = static_cast<unsigned short>(std::min(cores, 4u));
    SSpatialLayerConfig& l = p.sSpatialLayers[0];
    l.iVideoWidth = p.iPicWidth;
    l.iVideoHeight = p.iPicHeight;
    l.fFrameRate = p.fMaxFrameRate;
    l.iSpatialBitrate = p.iTargetBitrate;
    l.iMaxSpatialBitrate = p.iMaxBitrate;
    l.uiProfileIdc = PRO_BASELINE;
    l.uiLevelIdc = LEVEL_UNKNOWN;  // the encoder picks the level that fits size and rate
    // One slice per thread: the slice-threaded equivalent of x264's sliced-threads.
    l.sSliceArgument.uiSliceMode = p.iMultipleThreadIdc > 1 ? SM_FIXEDSLCNUM_SLICE : SM_SINGLE_SLICE;
    l.sSliceArgument.uiSliceNum = p.iMultipleThreadIdc > 1 ? p.iMultipleThreadIdc : 1;
    l.bVideoSignalTypePresent = true;
    l.uiVideoFormat = VF_UNDEF;
    l.bFullRange = false;
    l.bColorDescriptionPresent = true;
    l.uiColorPrimaries = CP_BT709;
    l.uiTransferCharacteristics = TRC_BT709;
    l.uiColorMatrix = CM_BT709;
    if (config.profile == Profile::kMain) {
      *error = "openh264: only constrained baseline is supported (profile main was asked for)";
      Close();
      return false;
    }
    const int r = enc_->InitializeExt(&p);
    if (r != 0) {
      *error = "openh264: InitializeExt failed (" + std::to_string(r) + ") for " + std::to_string(config.width) + "x" +
               std::to_string(config.height);
      Close();
      return false;
    }
    int fmt = videoFormatI420;
    enc_->SetOption(ENCODER_OPTION_DATAFORMAT, &fmt);
    return true;
  }

  Status Encode(const InputFrame& in, bool force_idr, EncodedUnit* out, std::string* error) override {
    out->data.clear();
    out->keyframe = false;
    if (TakeFault()) {
      *error = "openh264: injected fault";
      return Status::kError;
    }
    if (enc_ == nullptr) {
      *error = "openh264: not open";
      return Status::kError;
    }
    if (force_idr) enc_->ForceIntraFrame(true);
    SSourcePicture pic;
    std::memset(&pic, 0, sizeof(pic));
    pic.iColorFormat = videoFormatI420;
    pic.iPicWidth = static_cast<int>(cfg_.width);
    pic.iPicHeight = static_cast<int>(cfg_.height);
    for (int i = 0; i < 3; ++i) {
      pic.pData[i] = const_cast<unsigned char*>(in.planes[i]);
      pic.iStride[i] = in.strides[i];
    }
    pic.uiTimeStamp = in.pts_90k / 90;  // milliseconds
    SFrameBSInfo info;
    std::memset(&info, 0, sizeof(info));
    const int r = enc_->EncodeFrame(&pic, &info);
    if (r != cmResultSuccess) {
      *error = "openh264: EncodeFrame failed (" + std::to_string(r) + ")";
      return Status::kError;
    }
    if (info.eFrameType == videoFrameTypeSkip || info.eFrameType == videoFrameTypeInvalid) return Status::kOk;
    // The layers' NAL units already carry Annex-B start codes: concatenate them.
    for (int li = 0; li < info.iLayerNum; ++li) {
      const SLayerBSInfo& layer = info.sLayerInfo[li];
      size_t size = 0;
      for (int n = 0; n < layer.iNalCount; ++n) size += static_cast<size_t>(layer.pNalLengthInByte[n]);
      out->data.insert(out->data.end(), layer.pBsBuf, layer.pBsBuf + size);
    }
    out->keyframe = info.eFrameType == videoFrameTypeIDR;
    out->pts_90k = in.pts_90k;
    return Status::kOk;
  }

  bool SetBitrate(uint32_t bps) override {
    if (enc_ == nullptr) return false;
    cfg_.bitrate_bps = bps;
    SBitrateInfo b;
    b.iLayer = SPATIAL_LAYER_ALL;
    b.iBitrate = static_cast<int>(bps);
    // The max first: OpenH264 refuses a target above the current maximum.
    enc_->SetOption(ENCODER_OPTION_MAX_BITRATE, &b);
    return enc_->SetOption(ENCODER_OPTION_BITRATE, &b) == cmResultSuccess;
  }

  bool SetFramerate(uint32_t fps) override {
    if (enc_ == nullptr) return false;
    cfg_.fps = fps;
    float f = static_cast<float>(fps);
    return enc_->SetOption(ENCODER_OPTION_FRAME_RATE, &f) == cmResultSuccess;
  }

  void Close() override {
    if (enc_ == nullptr) return;
    enc_->Uninitialize();
    WelsDestroySVCEncoder(enc_);
    enc_ = nullptr;
  }

 private:
  EncoderConfig cfg_;
  ISVCEncoder* enc_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> CreateOpenH264Backend() { return std::make_unique<OpenH264Backend>(); }

}  // namespace wl::encode
