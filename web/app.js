// Parley's browser client: one WebSocket session (text chat, and signaling for the call),
// one WebRTC peer connection while a call is up. See docs/protocol.md for the messages.

const VOICE_DB = -40; // a 20 ms level above this counts as voice (as the server's harness does)
const TICK_MS = 20;
const SESSION_KEY = "parley.session";

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"),
  call: $("call"),
  meter: $("meter"),
  notice: $("notice"),
  turns: $("turns"),
  partial: $("partial"),
  form: $("text-form"),
  input: $("text-input"),
  remoteAudio: $("remote-audio"),
};

const parley = {
  ws: null,
  pc: null,
  mic: null,
  audio: null,
  session: JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null"),
  reconnectDelay: 500,
  closing: false,
  // Refused for want of room (over_capacity): when to try again, how often it happened in a row,
  // and whether the call itself (not only the session) is to be tried again.
  busy: null, // {until: ms timestamp, attempts, redial}
  busyTimer: null,
  // Sent away by a server shutting down (bye with reconnect): come back after delayMs.
  rejoin: null, // {delayMs, redial}
  redial: false,
  turns: new Map(), // turn_id -> {user, bot, latency, stages, v2v}
  lastTurnId: null,
  // voice-to-voice, measured here: end of the user's speech to the first reply audio playing
  userVoiceAt: 0,
  awaitingReply: false,
  // bot voice heard while the user's voice was going (talked over), until the user's turn is final
  overlapMs: 0,
  maxRemoteDb: -Infinity,
};
window.parley = parley; // for tests and for curious people in the console

function setState(state) {
  ui.state.textContent = state;
  document.body.dataset.state = state;
}

function notify(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

// --- the WebSocket session ---------------------------------------------------------------

function connect() {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (parley.session) {
    url.searchParams.set("session_id", parley.session.session_id);
    url.searchParams.set("resume_token", parley.session.resume_token);
  }
  setState("connecting");
  const ws = new WebSocket(url);
  parley.ws = ws;
  ws.onopen = () => { parley.reconnectDelay = 500; };
  ws.onmessage = (event) => handle(JSON.parse(event.data));
  ws.onclose = () => {
    if (parley.ws !== ws) return;
    parley.ws = null;
    endCall({ notifyServer: false });
    if (parley.closing) return;
    if (parley.busy) {
      setState("busy");
      waitForALine();
      return;
    }
    setState("reconnecting");
    const rejoin = parley.rejoin;
    parley.rejoin = null;
    if (rejoin) {
      parley.redial = rejoin.redial;
      setTimeout(connect, rejoin.delayMs);
      return;
    }
    setTimeout(connect, parley.reconnectDelay);
    parley.reconnectDelay = Math.min(parley.reconnectDelay * 2, 8000);
  };
}

// All lines busy: wait what the server said, longer after each refusal in a row (at most a
// minute), with jitter so that callers refused together do not all come back together.
function lineBusy(message) {
  const attempts = parley.busy ? parley.busy.attempts + 1 : 1;
  const base = Math.max(1, message.retry_after || 5) * Math.min(2 ** (attempts - 1), 8);
  const delayMs = Math.min(base, 60) * 1000 * (0.75 + Math.random() * 0.5);
  const redial = message.kind === "call" || Boolean(parley.busy && parley.busy.redial);
  parley.busy = { until: Date.now() + delayMs, attempts, redial };
}

function waitForALine() {
  clearInterval(parley.busyTimer);
  const tick = () => {
    const left = Math.ceil((parley.busy.until - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(parley.busyTimer);
      notify("Calling again…");
      connect();
      return;
    }
    notify(`All lines are busy — trying again in ${left} s`);
  };
  tick();
  parley.busyTimer = setInterval(tick, 250);
}

function send(message) {
  if (parley.ws && parley.ws.readyState === WebSocket.OPEN) {
    parley.ws.send(JSON.stringify(message));
    return true;
  }
  return false;
}

function handle(message) {
  switch (message.type) {
    case "session":
      parley.session = message;
      sessionStorage.setItem(SESSION_KEY, JSON.stringify(message));
      setState(parley.pc ? "listening" : "ready");
      if (parley.busy) {
        const redial = parley.busy.redial;
        if (!redial) parley.busy = null; // a session was all we waited for
        notify("");
        if (redial) startCall();
      } else if (parley.redial) {
        parley.redial = false; // the call moved here from a server that went away
        startCall();
      }
      break;
    case "history":
      ui.turns.replaceChildren();
      parley.turns.clear();
      for (const turn of message.turns) {
        if (turn.role === "user") userTurn(turn.turn_id, turn.text);
        else botTurn(turn.turn_id.replace(/-bot$/, ""), turn.text, { interrupted: turn.interrupted });
      }
      break;
    case "answer":
      parley.busy = null; // the call is through
      if (parley.pc) parley.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      break;
    case "state":
      setState(message.state);
      if (message.state === "thinking" && parley.pc) parley.awaitingReply = true;
      break;
    case "transcript":
      if (message.final) {
        ui.partial.textContent = "";
        userTurn(message.turn_id, message.text);
      } else {
        ui.partial.textContent = message.text;
      }
      break;
    case "reply":
      if (message.done) botTurn(message.turn_id, message.text, { interrupted: message.interrupted, done: true });
      else botDelta(message.turn_id, message.delta);
      break;
    case "metrics":
      turnFor(message.turn_id).stages = message.stages_ms;
      showLatency(message.turn_id);
      break;
    case "error":
      if (message.code === "media_failed") {
        notify(`${message.message}. You can keep typing below.`);
        endCall({ notifyServer: false });
      } else if (message.code === "over_capacity") {
        lineBusy(message); // the server closes the socket next; onclose waits, then tries again
      } else if (message.code === "rate_limited") {
        notify(`Parley is very busy. Please try again in ${Math.ceil(message.retry_after)} s.`);
      } else if (["llm_unavailable", "llm_busy"].includes(message.code)) {
        notify("The assistant is having trouble answering right now.");
      } else if (message.code === "resume_failed") {
        parley.session = null;
        sessionStorage.removeItem(SESSION_KEY);
      } else {
        console.warn(`Parley: ${message.code}: ${message.message}`);
      }
      break;
    case "ping":
      send({ type: "pong" });
      break;
    case "bye":
      if (message.reconnect) {
        // This server is going away (draining): come back, to another one, in a moment (with
        // jitter: everyone on it is leaving at once); the session, and a call in progress, go on
        // there with the same dialog.
        parley.rejoin = { delayMs: 200 + Math.random() * 800, redial: Boolean(parley.pc) };
      }
      break;
  }
}

// --- the conversation on screen ------------------------------------------------------------

function turnFor(turnId) {
  if (!parley.turns.has(turnId)) parley.turns.set(turnId, { user: null, bot: null, latency: null });
  return parley.turns.get(turnId);
}

function userTurn(turnId, text) {
  const turn = turnFor(turnId);
  if (!turn.user) {
    turn.user = document.createElement("li");
    turn.user.className = "user";
    turn.user.dataset.testid = "transcript";
    turn.user.dataset.turnId = turnId;
    ui.turns.append(turn.user);
  }
  turn.overlap = (turn.overlap || 0) + parley.overlapMs;
  parley.overlapMs = 0;
  turn.user.textContent = text; // a continued turn replaces its earlier final transcript...
  if (turn.text) turn.text.textContent = ""; // ...and the reply begun for it was dropped
  parley.lastTurnId = turnId;
}

function botElement(turnId) {
  const turn = turnFor(turnId);
  if (!turn.bot) {
    turn.bot = document.createElement("li");
    turn.bot.className = "bot";
    turn.bot.dataset.testid = "reply";
    turn.bot.dataset.turnId = turnId;
    turn.text = document.createElement("span");
    turn.text.dataset.testid = "reply-text";
    turn.latency = document.createElement("span");
    turn.latency.className = "latency";
    turn.latency.dataset.testid = "latency";
    turn.bot.append(turn.text, turn.latency);
    ui.turns.append(turn.bot);
  }
  return turn;
}

function botDelta(turnId, delta) {
  const turn = botElement(turnId);
  turn.text.textContent += delta;
  turn.bot.scrollIntoView({ block: "nearest" });
}

function botTurn(turnId, text, { interrupted = false, done = false } = {}) {
  const turn = botElement(turnId);
  if (!done || text) turn.text.textContent = text;
  turn.bot.classList.toggle("interrupted", Boolean(interrupted));
  if (done) turn.bot.dataset.done = "true";
}

function showLatency(turnId) {
  const turn = turnFor(turnId);
  if (!turn.latency) botElement(turnId);
  const parts = [];
  if (turn.v2v !== undefined) parts.push(`voice to voice ${Math.round(turn.v2v)} ms (measured here)`);
  if (turn.stages && turn.stages.end_of_turn_silence !== undefined) {
    parts.push(`turn ended after ${Math.round(turn.stages.end_of_turn_silence)} ms of silence`);
  }
  if (turn.overlap !== undefined) parts.push(`talked over ${Math.round(turn.overlap)} ms`);
  if (turn.stages) {
    const s = turn.stages;
    const stage = (name, key) => (s[key] !== undefined ? `${name} ${Math.round(s[key])}` : null);
    const server = [stage("asr", "asr"), stage("llm", "llm_first_token"), stage("tts", "tts_first_audio")].filter(Boolean);
    if (server.length) parts.push(`server: ${server.join(", ")} ms`);
  }
  turn.latency.textContent = parts.join(" · ");
}

// --- the call --------------------------------------------------------------------------------

function levelDb(analyser, buffer) {
  analyser.getFloatTimeDomainData(buffer);
  let sum = 0;
  for (const x of buffer) sum += x * x;
  const rms = Math.sqrt(sum / buffer.length);
  return rms > 0 ? 20 * Math.log10(rms) : -Infinity;
}

async function startCall() {
  notify("");
  ui.call.disabled = true;
  try {
    parley.mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (error) {
    ui.call.disabled = false;
    notify(`The microphone is not available (${error.name}). You can keep typing below.`);
    return;
  }
  const pc = new RTCPeerConnection();
  parley.pc = pc;
  parley.audio = new AudioContext();
  const micAnalyser = parley.audio.createAnalyser();
  micAnalyser.fftSize = 1024;
  parley.audio.createMediaStreamSource(parley.mic).connect(micAnalyser);
  let remoteAnalyser = null;

  for (const track of parley.mic.getAudioTracks()) pc.addTrack(track, parley.mic);
  pc.ontrack = (event) => {
    const stream = event.streams[0] || new MediaStream([event.track]);
    ui.remoteAudio.srcObject = stream; // Chrome only feeds WebAudio from a remote stream that also plays
    remoteAnalyser = parley.audio.createAnalyser();
    remoteAnalyser.fftSize = 1024;
    parley.audio.createMediaStreamSource(stream).connect(remoteAnalyser);
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed") {
      notify("The call could not connect (no network path for audio). You can keep typing below.");
      endCall();
    }
  };

  const buffer = new Float32Array(1024);
  parley.ticker = setInterval(() => {
    const now = performance.now();
    const mic = levelDb(micAnalyser, buffer);
    ui.meter.style.width = `${Math.max(0, Math.min(100, (mic + 60) * (100 / 60)))}%`;
    if (mic > VOICE_DB) {
      parley.userVoiceAt = now;
    }
    if (remoteAnalyser) {
      const remote = levelDb(remoteAnalyser, buffer);
      parley.maxRemoteDb = Math.max(parley.maxRemoteDb, remote);
      if (remote > VOICE_DB && mic > VOICE_DB) parley.overlapMs += TICK_MS;
      if (remote > VOICE_DB && parley.awaitingReply && parley.userVoiceAt) {
        parley.awaitingReply = false;
        const turn = turnFor(parley.lastTurnId);
        turn.v2v = now - parley.userVoiceAt;
        showLatency(parley.lastTurnId);
      }
    }
  }, TICK_MS);

  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  send({ type: "offer", sdp: pc.localDescription.sdp });
  ui.call.textContent = "Hang up";
  ui.call.setAttribute("aria-pressed", "true");
  ui.call.disabled = false;
}

function gatheringComplete(pc) {
  // Candidates go inside the offer; on a LAN or loopback gathering takes milliseconds.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 2000);
  });
}

function endCall({ notifyServer = true } = {}) {
  if (!parley.pc) return;
  clearInterval(parley.ticker);
  parley.pc.close();
  parley.pc = null;
  for (const track of parley.mic ? parley.mic.getTracks() : []) track.stop();
  parley.mic = null;
  if (parley.audio) parley.audio.close();
  parley.audio = null;
  ui.remoteAudio.srcObject = null;
  ui.meter.style.width = "0";
  ui.call.textContent = "Call";
  ui.call.setAttribute("aria-pressed", "false");
  ui.call.disabled = false;
  // The server ties a call to its socket: hanging up is a fresh session on the same dialog.
  if (notifyServer && parley.ws) {
    send({ type: "bye" });
  }
}

ui.call.addEventListener("click", () => {
  if (parley.busy && parley.busy.redial) {
    parley.busy.redial = false; // waiting for a line, the caller changed their mind
    notify("");
    return;
  }
  if (parley.pc) endCall();
  else startCall();
});

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.input.value.trim();
  if (!text) return;
  if (send({ type: "text", text })) {
    const id = `typed-${Date.now()}`;
    const li = document.createElement("li");
    li.className = "user typed";
    li.textContent = text;
    li.id = id;
    ui.turns.append(li);
    ui.input.value = "";
  } else {
    notify("Not connected yet; trying again shortly.");
  }
});

window.addEventListener("beforeunload", () => {
  parley.closing = true;
});

connect();
