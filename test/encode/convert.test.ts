// The encoder's damage-aware colour conversion: the native unit tests (native/test/convert_test.cc, built
// by binding.gyp as native/build/Release/convert_test) reported test by test. Banded conversions of random
// damage must stay byte-identical to full ones (odd sizes, edge rows, a picture the encoder still holds).
import { describeNativeTap } from "../helpers/native-tap.js";

describeNativeTap("native damage-aware conversion unit tests (convert_test)", "convert_test", { minPlan: 29, timeoutMs: 120_000 });
