// Parley's browser client: one WebSocket session (text chat, and signaling for the call),
// one WebRTC peer connection while a call is up. See docs/protocol.md for the messages.
//
// A dropped socket is resumed, not started over: the page opens /ws?resume, names its session and
// the last event it saw, and gets back the dialog (`history`) and the events it missed (replayed
// with their ids). A peer connection does not outlive its socket, so a call that was up is dialled
// again on the resumed session: a new RTCPeerConnection with the same microphone.

const VOICE_DB = -40; // a 20 ms level above this counts as voice (as the server's harness does)
const TICK_MS = 20;
const SESSION_KEY = "parley.session";
const ENDED_ELSEWHERE = "This call continued in another window. Press Call to start a new one here.";
const ENDED_AT_MAX_LENGTH = "This call reached its maximum length. Press Call to start a new one.";

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"),
  call: $("call"),
  mute: $("mute"),
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
  online: false, // the socket's `session` came: the page may send (a resuming socket's first message is `resume`)
  pc: null,
  mic: null, // the microphone stream: kept while the socket is away, so the call goes on with it
  muted: false, // the caller muted the microphone (before or during a call): its track is disabled
  audio: null,
  micAnalyser: null,
  remote: null, // {source, analyser}: the bot's voice on the current peer connection
  ticker: null,
  // {session_id, dialog_id, resume_token, resumed, last_event_id}, kept for this tab in
  // sessionStorage: a reload or a dropped socket resumes the session and replays only what was missed.
  session: JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null"),
  // The session's RTCConfiguration (ICE servers with TURN credentials of its own, transport policy):
  // not kept with the session, since every `session` message, a resumed one too, brings fresh ones.
  rtcConfiguration: {},
  reconnectDelay: 500,
  closing: false,
  ended: false, // the session went on in another window, or reached its maximum length: do not come back
  // Refused for want of room (over_capacity): when to try again and how often it happened in a row.
  // position: the place in line held (given: this refusal gave it, rather than carried it over).
  busy: null, // {until: ms timestamp, attempts, position, given}
  busyTimer: null,
  leaveLine: false, // the caller hung up while in line: say bye as soon as the session is back
  // Sent away by a server shutting down (bye with reconnect): come back after delayMs.
  rejoin: null, // {delayMs}
  // Dial as soon as a session is up: a call was up when the socket closed, or a refused call waits for a line.
  redial: false,
  turns: new Map(), // turn_id -> {user, bot, text, latency, stages, v2v, overlap, storedUser, storedBot}
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
  const resuming = Boolean(parley.session);
  const url = new URL(resuming ? "/ws?resume" : "/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  setState("connecting");
  const ws = new WebSocket(url);
  parley.ws = ws;
  parley.online = false;
  ws.onopen = () => {
    parley.reconnectDelay = 500;
    if (!resuming) return;
    // The token travels only in this first message, never in the URL (servers and proxies log URLs).
    const { session_id, resume_token, last_event_id } = parley.session;
    ws.send(JSON.stringify({ type: "resume", session_id, resume_token, last_event_id: last_event_id ?? null }));
  };
  ws.onmessage = (event) => {
    if (parley.ws === ws) receive(JSON.parse(event.data));
  };
  ws.onclose = () => {
    if (parley.ws !== ws) return;
    parley.ws = null;
    parley.online = false;
    const callWasUp = Boolean(parley.mic);
    closePeer(); // the server ended its side of the call with the socket
    if (parley.closing || parley.ended) {
      releaseMicrophone();
      return;
    }
    if (callWasUp) {
      // However the socket closed (the network, a server going away, a close the page did not ask
      // for), the call goes on: dialled again once the session is resumed, with the same microphone.
      parley.redial = true;
      ui.call.disabled = false; // the caller can still hang up while the page reconnects
    }
    if (parley.busy) {
      // Waiting without a place in line may last a minute: do not hold the microphone meanwhile.
      // In line, the page comes back every few seconds: keep it (and the Hang up button) open.
      if (!parley.busy.position) releaseMicrophone();
      setState("busy");
      waitForALine();
      return;
    }
    setState("reconnecting");
    const rejoin = parley.rejoin;
    parley.rejoin = null;
    if (rejoin) {
      setTimeout(connect, rejoin.delayMs);
      return;
    }
    setTimeout(connect, parley.reconnectDelay);
    parley.reconnectDelay = Math.min(parley.reconnectDelay * 2, 8000);
  };
}

function saveSession() {
  if (parley.session) sessionStorage.setItem(SESSION_KEY, JSON.stringify(parley.session));
  else sessionStorage.removeItem(SESSION_KEY);
}

// All lines busy: wait what the server said, longer after each refusal in a row (at most a
// minute), with jitter so that callers refused together do not all come back together. A caller
// with a place in line (`position`) comes back each time it is told, not later: it holds its place
// only by trying again in time, and no one behind it can take a line before it does.
function lineBusy(message) {
  if (message.kind === "call" && !parley.mic) {
    // The caller hung up while this offer was on its way: no waiting; a place it got is given up.
    if (message.position) parley.leaveLine = true;
    return;
  }
  const position = message.position || null;
  const last = parley.busy;
  // One refusal without a place (a replica shutting down, say) right after one with a place: the
  // place is still held (line_hold_s), so the page comes back as soon and does not back off.
  const held = position || (last && last.given ? last.position : null);
  const attempts = held ? 1 : (last ? last.attempts + 1 : 1);
  const growth = held ? 1 : Math.min(2 ** (attempts - 1), 8);
  const base = Math.max(1, message.retry_after || 5) * growth;
  // First in line, with the free line on another replica (held for it): come back at once, for the
  // balancer to send the page there.
  const soon = position === 1 && message.room_elsewhere ? 0.1 : 1;
  const delayMs = Math.min(base, 60) * 1000 * soon * (0.75 + Math.random() * (held ? 0.25 : 0.5));
  if (message.kind === "call") parley.redial = true; // a refused call is dialled again by itself
  parley.busy = { until: Date.now() + delayMs, attempts, position: held, given: Boolean(position) };
}

// Waiting for a line, the caller hung up: stop waiting, and give up a place in line at once (a bye
// on the session, now or as soon as it is back), so the callers behind it move up.
function stopWaiting() {
  const inLine = Boolean(parley.busy && parley.busy.position);
  parley.redial = false;
  parley.busy = null;
  clearInterval(parley.busyTimer);
  closePeer();
  releaseMicrophone();
  notify("");
  if (parley.online) {
    send({ type: "bye" }); // hangs up an offer still on its way too
    return;
  }
  parley.leaveLine = inLine;
  if (!parley.ws || parley.ws.readyState === WebSocket.CLOSED) connect();
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
    const place = parley.busy.position ? ` — you are number ${parley.busy.position} in line` : "";
    notify(`All lines are busy${place} — trying again in ${left} s`);
  };
  tick();
  parley.busyTimer = setInterval(tick, 250);
}

function send(message) {
  if (parley.online && parley.ws && parley.ws.readyState === WebSocket.OPEN) {
    parley.ws.send(JSON.stringify(message));
    return true;
  }
  return false;
}

// Event ids are Redis stream ids, "<ms>-<seq>": compared as two numbers ("9-0" comes before "10-0").
function eventIdAfter(id, last) {
  if (last == null) return true;
  const [ms, seq] = id.split("-").map(Number);
  const [lastMs, lastSeq] = last.split("-").map(Number);
  return ms !== lastMs ? ms > lastMs : seq > lastSeq;
}

// A replayed event of a turn that `history` already holds adds nothing but repeats: the dialog
// stores the caller's final transcript and the reply as heard, and replayed deltas would add the
// reply's words a second time.
function heldByHistory(message) {
  const turn = parley.turns.get(message.turn_id);
  if (!turn) return false;
  return message.type === "transcript" ? Boolean(turn.storedUser) : message.type === "reply" && Boolean(turn.storedBot);
}

function receive(message) {
  if (message.id != null && parley.session) {
    // A replay can overlap what the page already has: an id that is not after the last one seen is a repeat.
    if (!eventIdAfter(message.id, parley.session.last_event_id)) return;
    parley.session.last_event_id = message.id;
    saveSession();
  }
  if (message.replayed && heldByHistory(message)) return;
  handle(message);
}

function handle(message) {
  switch (message.type) {
    case "session": {
      // A resumed session goes on from the last event seen; a new one has seen none.
      const lastSeen = message.resumed && parley.session ? parley.session.last_event_id ?? null : null;
      const { session_id, dialog_id, resume_token, resumed } = message;
      parley.session = { session_id, dialog_id, resume_token, resumed, last_event_id: lastSeen };
      saveSession();
      parley.rtcConfiguration = message.rtc_configuration || {};
      parley.online = true;
      setState("ready");
      if (parley.busy) notify("");
      if (parley.leaveLine) {
        parley.leaveLine = false;
        send({ type: "bye" }); // gives up the place in line (the socket closes; the session comes back)
      }
      if (parley.redial) {
        parley.redial = false;
        startCall(); // `busy` stays until the answer: a call refused again waits longer
      } else {
        parley.busy = null; // a session was all we waited for
      }
      break;
    }
    case "history": {
      // The dialog as stored replaces what the page shows. A reply still arriving when the socket
      // dropped that the dialog lacks (nothing of it heard yet, or a stock line, which is not kept)
      // stays: its replayed deltas go on from where the page was.
      const unfinished = [...parley.turns]
        .filter(([, turn]) => turn.bot && turn.bot.dataset.done !== "true" && turn.text.textContent)
        .map(([turnId, turn]) => [turnId, turn.text.textContent]);
      ui.turns.replaceChildren();
      parley.turns.clear();
      for (const turn of message.turns) {
        if (turn.role === "user") {
          userTurn(turn.turn_id, turn.text);
          turnFor(turn.turn_id).storedUser = true;
        } else {
          const turnId = turn.turn_id.replace(/-bot$/, "");
          botTurn(turnId, turn.text, { interrupted: turn.interrupted, done: true });
          turnFor(turnId).storedBot = true;
        }
      }
      for (const [turnId, text] of unfinished) {
        const turn = parley.turns.get(turnId);
        if (!turn || !turn.user || turn.bot) continue; // not this dialog's, or stored after all
        botTurn(turnId, text);
        turn.user.after(turn.bot);
      }
      break;
    }
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
      else if (message.restart) botTurn(message.turn_id, ""); // answered again after a move: start over
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
      } else if (message.code === "too_many_calls") {
        // This address's other calls hold its places: dialling again would only be refused again.
        endCall({ notifyServer: false });
        notify("Too many calls are open from your network. Hang one up, then press Call.");
      } else if (message.code === "rate_limited") {
        notify(`Parley is very busy. Please try again in ${Math.ceil(message.retry_after)} s.`);
      } else if (["llm_unavailable", "llm_busy"].includes(message.code)) {
        notify("The assistant is having trouble answering right now.");
      } else if (message.code === "resume_failed") {
        // A new session follows, on a new dialog: a call that was up cannot go on in it. (A call
        // waiting for a line holds no microphone; it is still dialled.)
        parley.session = null;
        saveSession();
        if (parley.mic) {
          endCall({ notifyServer: false });
          notify("The call could not be resumed. Press Call to start a new one.");
        }
      } else {
        console.warn(`Parley: ${message.code}: ${message.message}`);
      }
      break;
    case "ping":
      send({ type: "pong" });
      break;
    case "bye":
      if (message.reason === "resumed_elsewhere" || message.reason === "max_call_length") {
        // Another window (or connection) took the session over and spent the token this page
        // held, or the session reached its maximum length: coming back would only fail. The
        // call ends here (and goes on in the other window).
        parley.ended = true;
        parley.session = null;
        saveSession();
        endCall({ notifyServer: false });
        setState("offline");
        notify(message.reason === "max_call_length" ? ENDED_AT_MAX_LENGTH : ENDED_ELSEWHERE);
      } else if (message.reconnect) {
        // This server is going away (draining): come back, to another one, in a moment (with
        // jitter: everyone on it is leaving at once); the session, and a call in progress, go on
        // there with the same dialog.
        parley.rejoin = { delayMs: 200 + Math.random() * 800 };
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

// The microphone if it is not open yet (a call that is dialled again keeps its own), then a peer connection.
async function startCall() {
  notify("");
  ui.call.disabled = true;
  if (!parley.mic && !(await openMicrophone())) return;
  await dial();
}

async function openMicrophone() {
  try {
    parley.mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (error) {
    ui.call.disabled = false;
    notify(`The microphone is not available (${error.name}). You can keep typing below.`);
    return false;
  }
  setMuted(parley.muted); // muted before the call: the microphone opens muted
  parley.audio = new AudioContext();
  parley.micAnalyser = parley.audio.createAnalyser();
  parley.micAnalyser.fftSize = 1024;
  parley.audio.createMediaStreamSource(parley.mic).connect(parley.micAnalyser);

  const buffer = new Float32Array(1024);
  parley.ticker = setInterval(() => {
    const now = performance.now();
    const mic = levelDb(parley.micAnalyser, buffer);
    ui.meter.style.width = `${Math.max(0, Math.min(100, (mic + 60) * (100 / 60)))}%`;
    if (mic > VOICE_DB) {
      parley.userVoiceAt = now;
    }
    if (parley.remote) {
      const remote = levelDb(parley.remote.analyser, buffer);
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
  ui.call.textContent = "Hang up";
  ui.call.setAttribute("aria-pressed", "true");
  return true;
}

// Muted, the microphone's track is disabled: the browser sends silence (in DTX, next to nothing),
// so the server hears no one, and the meter shows none. It holds from before a call, across a redial
// (the same track), until the caller unmutes.
function setMuted(muted) {
  parley.muted = muted;
  for (const track of parley.mic ? parley.mic.getAudioTracks() : []) track.enabled = !muted;
  ui.mute.textContent = muted ? "Unmute" : "Mute";
  ui.mute.setAttribute("aria-pressed", String(muted));
  document.body.dataset.muted = String(muted);
}

// A new peer connection for the microphone, offered on the current socket.
async function dial() {
  const pc = new RTCPeerConnection(parley.rtcConfiguration);
  parley.pc = pc;
  for (const track of parley.mic.getAudioTracks()) pc.addTrack(track, parley.mic);
  pc.ontrack = (event) => {
    if (parley.pc !== pc) return;
    const stream = event.streams[0] || new MediaStream([event.track]);
    ui.remoteAudio.srcObject = stream; // Chrome only feeds WebAudio from a remote stream that also plays
    const analyser = parley.audio.createAnalyser();
    analyser.fftSize = 1024;
    const source = parley.audio.createMediaStreamSource(stream);
    source.connect(analyser);
    parley.remote = { source, analyser };
  };
  pc.onconnectionstatechange = () => {
    if (parley.pc === pc && pc.connectionState === "failed") {
      notify("The call could not connect (no network path for audio). You can keep typing below.");
      endCall();
    }
  };

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
  } catch (error) {
    if (parley.pc === pc) throw error;
    // The socket closed meanwhile and took this peer connection with it; the call is dialled again.
  }
  ui.call.disabled = false;
  // Refused for want of a line, the page waits in the service's line (it tries again on this session).
  if (parley.pc === pc) send({ type: "offer", sdp: askForDtx(pc.localDescription.sdp), wait_in_line: true });
}

function askForDtx(sdp) {
  // usedtx=1 on every Opus payload type: while the bot is quiet the server then sends a tiny packet
  // every 400 ms instead of 50 packets a second, and the browser plays silence between them.
  const opus = new Set([...sdp.matchAll(/^a=rtpmap:(\d+) opus\//gim)].map((m) => m[1]));
  // Browsers always write an fmtp line with parameters for Opus (minptime, useinbandfec).
  return sdp.split("\r\n").map((line) => {
    const fmtp = /^a=fmtp:(\d+)(?: (.*))?$/.exec(line);
    if (!fmtp || !opus.has(fmtp[1]) || /(^|;)\s*usedtx=/.test(fmtp[2] || "")) return line;
    return fmtp[2] ? `${line};usedtx=1` : `${line} usedtx=1`;
  }).join("\r\n");
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

function closePeer() {
  if (parley.pc) parley.pc.close();
  parley.pc = null;
  if (parley.remote) parley.remote.source.disconnect();
  parley.remote = null;
  ui.remoteAudio.srcObject = null;
  parley.awaitingReply = false; // a reply awaited on this connection will not be heard on the next
}

function releaseMicrophone() {
  clearInterval(parley.ticker);
  for (const track of parley.mic ? parley.mic.getTracks() : []) track.stop();
  parley.mic = null;
  if (parley.audio) parley.audio.close();
  parley.audio = null;
  parley.micAnalyser = null;
  ui.meter.style.width = "0";
  ui.call.textContent = "Call";
  ui.call.setAttribute("aria-pressed", "false");
  ui.call.disabled = false;
}

function endCall({ notifyServer = true } = {}) {
  parley.redial = false;
  if (!parley.mic) return;
  closePeer();
  releaseMicrophone();
  // The server ties a call to its socket: hanging up is a fresh socket on the same session and dialog.
  if (notifyServer) send({ type: "bye" });
}

ui.call.addEventListener("click", () => {
  if (parley.busy && (parley.redial || parley.mic)) {
    stopWaiting(); // waiting for a line (between tries, or with an offer on its way): the caller hung up
    return;
  }
  if (parley.mic) {
    endCall();
  } else if (parley.ended) {
    // The session went on in another window: start a new one here, and call on it.
    parley.ended = false;
    parley.redial = true;
    notify("");
    connect();
  } else {
    startCall();
  }
});

ui.mute.addEventListener("click", () => setMuted(!parley.muted));

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
    notify(parley.ended ? ENDED_ELSEWHERE : "Not connected yet; trying again shortly.");
  }
});

window.addEventListener("beforeunload", () => {
  parley.closing = true;
});

connect();
