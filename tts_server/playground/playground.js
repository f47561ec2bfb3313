// VoxCPM playground: speak text through POST /generate and play it as it streams (Web Audio).
// No framework, no build step, nothing from another origin. `window.playground` is the page's state,
// read by the browser tests (tests/playground/): what was received and scheduled, timings, errors.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  // The page lives at <base>/playground/; the API at <base>/ (also behind a proxy's path prefix).
  const apiUrl = (path) => new URL("../" + path, location.href).toString();
  const LIVE_FORMATS = new Set(["pcm", "wav"]);
  const START_LEAD_S = 0.05; // schedule audio this far ahead so the first chunk does not start late

  const state = {
    state: "idle", // idle | loading | streaming | cancelling | cancelled | done | error
    requestId: null,
    format: null,
    sampleRate: null,
    bytesReceived: 0,
    samplesReceived: 0, // decoded from the response
    samplesScheduled: 0, // handed to Web Audio (AudioBufferSourceNode.start)
    samplesPlayed: 0, // of those, played to their end by the audio clock (not stopped)
    chunksScheduled: 0,
    ttfaMs: null,
    rtf: null,
    error: null, // {status, message, field, retryAfter, text}
    cancelResult: null, // the /cancel answer
    voices: [],
    voicesLoaded: 0, // how many times the voice list was loaded
    lastVoiceCreated: null,
  };
  window.playground = state;

  let audioCtx = null;
  let playAt = 0;
  let sources = [];
  let controller = null;
  let downloadUrl = null;
  let voicesCall = 0;

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    const key = $("api-key").value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    return headers;
  }

  function setState(value, text) {
    state.state = value;
    $("status").dataset.state = value;
    $("status").textContent = text;
    $("speak").disabled = value === "loading" || value === "streaming" || value === "cancelling";
    $("stop").disabled = !(value === "loading" || value === "streaming");
  }

  function setOutput(id, value, text) {
    const out = $(id);
    out.dataset.value = value === null ? "" : String(value);
    out.textContent = text;
  }

  // An error answer in words: the server's message, the field it names, Retry-After for a 503.
  async function describeError(response) {
    let message = response.statusText || "request failed";
    let field = null;
    try {
      const body = await response.json();
      const err = body && body.error ? body.error : body;
      if (err && err.message) message = err.message;
      if (err && (err.field || err.param)) field = err.field || err.param;
    } catch (_) {
      // not JSON: keep the status text
    }
    const status = response.status;
    const retryAfter = response.headers.get("Retry-After");
    let text;
    if (status === 401) text = `Not authorized (401): ${message}. Check the API key.`;
    else if (status === 403) text = `Forbidden (403): ${message}.`;
    else if (status === 503) {
      text = `Server busy or unavailable (503): ${message}.` + (retryAfter ? ` Retry after ${retryAfter} s.` : "");
    } else if (status >= 400 && status < 500) {
      text = `Request refused (${status}): ${message}` + (field ? ` (field: ${field})` : "");
    } else text = `Server error (${status}): ${message}`;
    return { status, message, field, retryAfter, text };
  }

  function showError(id, error) {
    const el = $(id);
    el.textContent = error ? error.text : "";
    el.hidden = !error;
  }

  async function loadVoices() {
    const call = ++voicesCall; // an older call answering late (the key changed meanwhile) is ignored
    showError("error", null);
    let response;
    let body = null;
    let error = null;
    try {
      response = await fetch(apiUrl("voices"), { headers: authHeaders() });
      if (response.ok) body = await response.json();
      else error = await describeError(response);
    } catch (exc) {
      error = { status: 0, text: `Cannot reach the server: ${exc.message}` };
    }
    if (call !== voicesCall) return;
    if (error) {
      state.error = error;
      showError("error", error);
      return;
    }
    const select = $("voice");
    const chosen = select.value;
    state.voices = body.voices || [];
    select.replaceChildren(new Option("Default voice", ""));
    for (const name of state.voices) select.add(new Option(name, name));
    if (state.voices.includes(chosen)) select.value = chosen;
    state.voicesLoaded += 1;
  }

  function silence() {
    for (const source of sources) {
      source.stopped = true;
      source.stop();
    }
    sources = [];
  }

  function resetRun(format) {
    silence();
    Object.assign(state, {
      requestId: null, format, sampleRate: null, bytesReceived: 0, samplesReceived: 0, samplesScheduled: 0,
      samplesPlayed: 0, chunksScheduled: 0, ttfaMs: null, rtf: null, error: null, cancelResult: null,
    });
    setOutput("ttfa", null, "–");
    setOutput("rtf", null, "–");
    setOutput("audio-seconds", null, "–");
    $("request-id").textContent = "–";
    $("download").hidden = true;
    if (downloadUrl) URL.revokeObjectURL(downloadUrl);
    downloadUrl = null;
    showError("error", null);
  }

  function schedule(samples, sampleRate) {
    if (samples.length === 0 || state.state !== "streaming") return;
    const buffer = audioCtx.createBuffer(1, samples.length, sampleRate);
    buffer.copyToChannel(samples, 0);
    const source = audioCtx.createBufferSource();
    source.buffer = buffer;
    source.connect(audioCtx.destination);
    playAt = Math.max(playAt, audioCtx.currentTime + START_LEAD_S);
    source.start(playAt);
    playAt += buffer.duration;
    sources.push(source);
    source.onended = () => {
      sources = sources.filter((s) => s !== source);
      if (!source.stopped) state.samplesPlayed += samples.length;
    };
    state.samplesScheduled += samples.length;
    state.chunksScheduled += 1;
  }

  // s16le bytes to float samples; an odd trailing byte waits for the next chunk.
  function pcmDecoder() {
    let carry = new Uint8Array(0);
    return (bytes) => {
      const all = new Uint8Array(carry.length + bytes.length);
      all.set(carry);
      all.set(bytes, carry.length);
      const usable = all.length - (all.length % 2);
      carry = all.slice(usable);
      const view = new DataView(all.buffer, 0, usable);
      const out = new Float32Array(usable / 2);
      for (let i = 0; i < out.length; i++) out[i] = view.getInt16(2 * i, true) / 32768;
      return out;
    };
  }

  // A streamed WAV: skip the RIFF header up to the data chunk (its size is "unknown"), then PCM.
  function wavDecoder(onRate) {
    const pcm = pcmDecoder();
    let head = new Uint8Array(0);
    let inData = false;
    return (bytes) => {
      if (inData) return pcm(bytes);
      const all = new Uint8Array(head.length + bytes.length);
      all.set(head);
      all.set(bytes, head.length);
      head = all;
      const view = new DataView(all.buffer);
      let pos = 12; // "RIFF" size "WAVE"
      while (pos + 8 <= all.length) {
        const id = String.fromCharCode(...all.subarray(pos, pos + 4));
        const size = view.getUint32(pos + 4, true);
        if (id === "fmt " && pos + 16 <= all.length) onRate(view.getUint32(pos + 12, true));
        if (id === "data") {
          inData = true;
          return pcm(all.subarray(pos + 8));
        }
        pos += 8 + size;
      }
      return new Float32Array(0);
    };
  }

  function showProgress(started) {
    const audioS = state.sampleRate ? state.samplesReceived / state.sampleRate : 0;
    setOutput("audio-seconds", audioS, `${audioS.toFixed(2)} s`);
    if (audioS > 0) {
      state.rtf = (performance.now() - started) / 1000 / audioS;
      setOutput("rtf", state.rtf, state.rtf.toFixed(3));
    }
  }

  async function speak(event) {
    event.preventDefault();
    const format = $("format").value;
    resetRun(format);
    // All set before the first await: the last run's end state is gone at once, and Stop can cancel from here.
    controller = new AbortController();
    const requestId = "pg-" + crypto.randomUUID().replaceAll("-", "");
    state.requestId = requestId; // known before the answer, so Stop can cancel a request still queued
    $("request-id").textContent = requestId;
    setState("loading", "Waiting for the server…");
    // Created on the click (a user gesture), so the browser lets it play.
    if (!audioCtx) audioCtx = new AudioContext();
    if (audioCtx.state === "suspended") await audioCtx.resume();
    playAt = 0;
    const body = { target_text: $("text").value, response_format: format, request_id: requestId };
    if ($("voice").value) body.voice = $("voice").value;
    if ($("max-steps").value) body.max_generate_length = Number($("max-steps").value);
    if ($("seed").value) body.seed = Number($("seed").value);
    const started = performance.now();
    let response;
    try {
      response = await fetch(apiUrl("generate"), {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (exc) {
      if (exc.name !== "AbortError") fail({ status: 0, text: `Cannot reach the server: ${exc.message}` });
      return;
    }
    if (!response.ok) {
      const error = await describeError(response);
      if (state.state === "loading") fail(error); // not when Stop came first
      return;
    }
    state.requestId = response.headers.get("X-Request-Id") || requestId;
    $("request-id").textContent = state.requestId;
    state.sampleRate = Number(response.headers.get("X-Sample-Rate")) || null;
    if (state.state !== "loading") return; // stopped while the headers were on their way
    setState("streaming", "Streaming…");
    const decode = format === "pcm" ? pcmDecoder() : wavDecoder((rate) => { state.sampleRate = rate; });
    const chunks = [];
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (state.state !== "streaming") break;
        if (state.ttfaMs === null) {
          state.ttfaMs = performance.now() - started;
          setOutput("ttfa", state.ttfaMs, `${Math.round(state.ttfaMs)} ms`);
        }
        state.bytesReceived += value.length;
        chunks.push(value);
        if (LIVE_FORMATS.has(format)) {
          const samples = decode(value);
          state.samplesReceived += samples.length;
          schedule(samples, state.sampleRate);
          showProgress(started);
        }
      }
    } catch (exc) {
      if (exc.name === "AbortError" || state.state !== "streaming") return;
      fail({ status: 0, text: `The stream broke off: ${exc.message}` });
      return;
    }
    if (state.state !== "streaming") return;
    const blob = new Blob(chunks, { type: response.headers.get("Content-Type") || "application/octet-stream" });
    if (!LIVE_FORMATS.has(format)) {
      try {
        const decoded = await audioCtx.decodeAudioData(await blob.arrayBuffer());
        state.sampleRate = decoded.sampleRate;
        state.samplesReceived = decoded.length;
        schedule(decoded.getChannelData(0), decoded.sampleRate);
        showProgress(started);
      } catch (exc) {
        fail({ status: 0, text: `This browser cannot decode ${format}: ${exc.message || exc}` });
        return;
      }
    }
    downloadUrl = URL.createObjectURL(blob);
    Object.assign($("download"), { href: downloadUrl, download: `speech.${format}`, hidden: false });
    const seconds = state.sampleRate ? state.samplesReceived / state.sampleRate : 0;
    setState("done", `Done: ${seconds.toFixed(2)} s of audio.`);
  }

  function fail(error) {
    state.error = error;
    showError("error", error);
    setState("error", "Failed.");
  }

  // Stop: silence what is scheduled, tell the server (its slot frees within an engine step), end the fetch.
  async function stop() {
    if (state.state !== "streaming" && state.state !== "loading") return;
    setState("cancelling", "Cancelling…");
    silence();
    try {
      const response = await fetch(apiUrl("cancel"), {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify({ request_id: state.requestId }),
      });
      if (response.ok) state.cancelResult = await response.json();
      else showError("error", (state.error = await describeError(response)));
    } catch (exc) {
      showError("error", (state.error = { status: 0, text: `Cannot reach the server: ${exc.message}` }));
    } finally {
      controller.abort();
      setState("cancelled", "Cancelled.");
    }
  }

  function readFile(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result); // a data: URL, which the server accepts as base64
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  async function createVoice(event) {
    event.preventDefault();
    showError("voice-error", null);
    const name = $("voice-name").value.trim();
    $("voice-status").textContent = "Uploading…";
    let response;
    try {
      const audio = await readFile($("voice-audio").files[0]);
      response = await fetch(apiUrl("voices"), {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify({ name, prompt_audio: audio, prompt_text: $("voice-text").value }),
      });
    } catch (exc) {
      $("voice-status").textContent = "";
      showError("voice-error", { text: `Upload failed: ${exc.message}` });
      return;
    }
    if (!response.ok) {
      $("voice-status").textContent = "";
      showError("voice-error", await describeError(response));
      return;
    }
    const description = await response.json();
    state.lastVoiceCreated = description.name || name;
    $("voice-status").textContent = `Voice "${state.lastVoiceCreated}" created.`;
    await loadVoices();
    $("voice").value = state.lastVoiceCreated;
  }

  $("speak-form").addEventListener("submit", speak);
  $("stop").addEventListener("click", stop);
  $("reload-voices").addEventListener("click", loadVoices);
  $("api-key").addEventListener("change", loadVoices);
  $("voice-form").addEventListener("submit", createVoice);
  loadVoices();
})();
