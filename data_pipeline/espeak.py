"""Minimal ctypes binding to espeak-ng (the library and data shipped by the ``espeakng-loader`` wheel).

Only what the demo corpus needs: synchronous synthesis into memory with a chosen voice and prosody.

Global state and safety:
  espeak-ng keeps all of its state (voice, parameters, output callback, noise generator and many wave
  generator variables such as the pitch-flutter phase and AGC level) in process-global C statics. Those
  statics carry over from one utterance to the next and are NOT reset by espeak_Terminate/espeak_Initialize,
  so the same text gives slightly different samples depending on what was synthesized before.
  To make ``synthesize`` a pure function of its arguments, by default (``fresh=True``) every call loads a
  private copy of the library, initializes it, synthesizes, and unloads it again (dlclose; checked with
  RTLD_NOLOAD), so each utterance starts from the library's pristine initial state. The copy lives in a
  per-process temporary folder (removed at exit) so other users of libespeak-ng in the process are not
  affected; next to it is a symlinked view of the data with lower-case voice aliases (see
  ``_Engine._private_files``) that makes loading a voice cheap. A fresh call costs about 1 ms on top of the
  synthesis itself (~1 ms per second of speech). ``fresh=False`` keeps the library loaded between calls
  (slightly faster, but the output then depends on the history).
  All calls into espeak-ng are serialized by one module-level lock (``_LOCK``): threads in one process
  synthesize one at a time. For parallelism use separate processes; each one loads its own copy lazily.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["EspeakError", "EspeakVoice", "synthesize", "sample_rate", "espeak_version", "library_paths"]

# espeak_AUDIO_OUTPUT
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
# espeak_POSITION_TYPE
_POS_CHARACTER = 1
# synth flags
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
# espeakINITIALIZE_DONT_EXIT: return an error instead of calling exit() when the data is missing.
_INIT_DONT_EXIT = 0x8000
_EE_OK = 0

# int callback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    """espeak-ng could not be loaded, initialized, or refused a voice/parameter/text."""


@dataclass(frozen=True)
class EspeakVoice:
    """A voice for espeak-ng: a voice name with optional variant plus prosody settings.

    name: espeak voice name, optionally ``+variant`` (e.g. "en-us", "en-us+f3", "en+klatt2", "en-gb-scotland+m4").
    rate: speaking rate in words per minute (espeak range 80..450, default 175).
    pitch: base pitch 0..100 (default 50).
    pitch_range: pitch range 0..100 (default 50; 0 = monotone).
    volume: amplitude 0..200 (default 100).
    word_gap: extra pause between words in units of 10 ms at the default rate (default 0).
    """

    name: str = "en-us"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    volume: int = 100
    word_gap: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def library_paths() -> tuple[str, str]:
    """Paths (shared library, data folder) of the espeak-ng copy inside the ``espeakng-loader`` wheel."""
    try:
        import espeakng_loader
    except ImportError as e:
        raise EspeakError(
            "the 'espeakng-loader' package (which ships libespeak-ng and its data) is not installed: "
            "pip install espeakng-loader"
        ) from e
    try:
        lib_path, data_path = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except RuntimeError as e:
        raise EspeakError(f"espeakng-loader is installed but incomplete: {e}") from e
    if not os.path.isfile(lib_path):
        raise EspeakError(f"espeakng-loader reports the espeak-ng library at {lib_path!r}, but it does not exist")
    return lib_path, data_path


class _Engine:
    """Process-global espeak-ng handle. Every method must be called while holding ``_LOCK``."""

    def __init__(self) -> None:
        self.lib: ctypes.CDLL | None = None
        self.sample_rate = 0
        self.version = ""
        self.chunks: list[np.ndarray] = []
        self.callback = _SYNTH_CALLBACK(self._on_samples)  # kept alive for as long as the engine exists
        self.voice_name: str | None = None
        self.private_dir: str | None = None
        self.private_owner_pid = -1

    def _on_samples(self, wav, num_samples, _events) -> int:
        if num_samples > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def _private_files(self) -> tuple[str, str]:
        """(library copy, data folder) private to this process; made on first use, removed at exit.

        The data folder mirrors espeakng-loader's data through symlinks, plus a lower-case alias in voices/
        for every language file under lang/ (e.g. voices/en-us -> lang/gmw/en-US). espeak-ng lower-cases voice
        names and, when voices/<name> or lang/<name> does not exist, scans and parses every voice file to
        find it (~3 ms, as long as the synthesis of a short sentence); with the aliases it opens the file directly.
        """
        if self.private_dir is None or not os.path.isdir(self.private_dir):
            lib_path, data_path = library_paths()
            folder = tempfile.mkdtemp(prefix="espeak-ng-")
            shutil.copyfile(lib_path, os.path.join(folder, "libespeak-ng-private.so"))
            data = os.path.join(folder, "espeak-ng-data")
            os.mkdir(data)
            for entry in os.listdir(data_path):
                if entry != "voices":
                    os.symlink(os.path.join(data_path, entry), os.path.join(data, entry))
            voices = os.path.join(data, "voices")
            os.mkdir(voices)
            real_voices = os.path.join(data_path, "voices")
            if os.path.isdir(real_voices):
                for entry in os.listdir(real_voices):
                    os.symlink(os.path.join(real_voices, entry), os.path.join(voices, entry))
            for parent, _, files in sorted(os.walk(os.path.join(data_path, "lang"))):
                for name in sorted(files):
                    alias = os.path.join(voices, name.lower())
                    if not os.path.lexists(alias):
                        os.symlink(os.path.join(parent, name), alias)
            self.private_dir = folder
            self.private_owner_pid = os.getpid()
            atexit.register(self._remove_private_files)
        folder = self.private_dir
        return os.path.join(folder, "libespeak-ng-private.so"), os.path.join(folder, "espeak-ng-data")

    def _remove_private_files(self) -> None:
        if self.private_dir and os.getpid() == self.private_owner_pid:
            shutil.rmtree(self.private_dir, ignore_errors=True)

    def load(self) -> None:
        if self.lib is not None:
            return
        path, data_path = self._private_files()
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise EspeakError(f"cannot load the espeak-ng library copy at {path!r}: {e}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Terminate.argtypes = []
        lib.espeak_Terminate.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None

        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INIT_DONT_EXIT)
        if rate <= 0:
            _ctypes.dlclose(lib._handle)
            raise EspeakError(f"espeak_Initialize failed (returned {rate}) with data path {data_path!r}")
        lib.espeak_SetSynthCallback(self.callback)
        self.lib = lib
        self.sample_rate = int(rate)
        self.version = lib.espeak_Info(None).decode()
        self.voice_name = None

    def unload(self) -> None:
        """Terminate espeak-ng and unload the private copy, so the next load starts from pristine statics."""
        if self.lib is None:
            return
        lib, self.lib = self.lib, None
        self.voice_name = None
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)
        try:  # RTLD_NOLOAD succeeds only if the library is still mapped
            ctypes.CDLL(self._private_files()[0], mode=os.RTLD_NOLOAD)
        except OSError:
            return
        raise EspeakError("the private espeak-ng copy could not be unloaded; its state would leak between calls")

    def set_voice(self, voice: EspeakVoice) -> None:
        assert self.lib is not None
        if voice.name != self.voice_name:
            _check_variant(voice.name)
            err = self.lib.espeak_SetVoiceByName(voice.name.encode())
            if err != _EE_OK:
                self.voice_name = None
                raise EspeakError(f"espeak-ng has no voice {voice.name!r} (error {err})")
            self.voice_name = voice.name
        # Selecting a voice resets some parameters, so set all of them every time.
        for param, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_VOLUME, voice.volume),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_WORDGAP, voice.word_gap),
        ):
            err = self.lib.espeak_SetParameter(param, int(value), 0)
            if err != _EE_OK:
                raise EspeakError(f"espeak_SetParameter({param}, {value}) failed (error {err}) for {voice}")


def _check_variant(name: str) -> None:
    """espeak-ng silently ignores an unknown "+variant"; refuse it instead."""
    if "+" not in name:
        return
    variant = name.split("+", 1)[1]
    _, data_path = library_paths()
    if not os.path.isfile(os.path.join(data_path, "voices", "!v", variant)):
        raise EspeakError(f"espeak-ng has no voice variant {variant!r} (in {name!r})")


_LOCK = threading.Lock()
_ENGINE = _Engine()


def sample_rate() -> int:
    """espeak-ng's native output sample rate in Hz (22050 with the standard data)."""
    with _LOCK:
        _ENGINE.load()
        return _ENGINE.sample_rate


def espeak_version() -> str:
    """Version string of the loaded espeak-ng library (e.g. "1.52.0")."""
    with _LOCK:
        _ENGINE.load()
        return _ENGINE.version


def synthesize(
    text: str, voice: EspeakVoice | str = "en-us", seed: int = 0, fresh: bool = True
) -> tuple[np.ndarray, int]:
    """Synthesize ``text`` with ``voice``.

    Args:
        text: UTF-8 text (plain text, no SSML).
        voice: an EspeakVoice, or just a voice name such as "en-us+f3".
        seed: seed for espeak-ng's internal noise generator (breath/aspiration noise).
        fresh: start from a freshly loaded library so the result depends only on (text, voice, seed);
            see the module docstring. With False the output also depends on earlier calls.

    Returns:
        (wave, sample_rate): wave is float32 (num_samples,) in [-1, 1) (int16 samples / 32768), sample_rate
        is espeak-ng's native rate (22050).
    Thread-safe (serialized by a process-wide lock).
    """
    if isinstance(voice, str):
        voice = EspeakVoice(name=voice)
    data = text.encode("utf-8") + b"\0"
    buf = ctypes.create_string_buffer(data, len(data))
    with _LOCK:
        if fresh:
            _ENGINE.unload()
        _ENGINE.load()
        lib = _ENGINE.lib
        assert lib is not None
        _ENGINE.chunks = []
        try:
            _ENGINE.set_voice(voice)
            lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
            err = lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
            if err != _EE_OK:
                raise EspeakError(f"espeak_Synth failed (error {err}) for text {text[:60]!r}")
            lib.espeak_Synchronize()
            chunks = _ENGINE.chunks
        finally:
            _ENGINE.chunks = []
            if fresh:
                _ENGINE.unload()
        rate = _ENGINE.sample_rate
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return pcm.astype(np.float32) / 32768.0, rate
