// The report editor: autosave of the draft, the sign dialog, and dictation with MediaRecorder.
"use strict";

(function () {
  const editor = document.getElementById("report-editor");
  if (!editor) return;
  const csrf = editor.querySelector("input[name=csrfmiddlewaretoken]").value;
  const status = document.getElementById("autosave-status");
  const sections = Array.from(editor.querySelectorAll("textarea"));
  const seconds = Number(editor.dataset.autosaveSeconds || "5");
  let dirty = false;
  let saving = null;

  function snapshot() {
    const body = new FormData();
    for (const area of sections) body.append(area.name, area.value);
    return body;
  }

  async function save() {
    if (!dirty) return saving;
    if (saving) return saving;
    dirty = false;
    saving = fetch(editor.dataset.autosaveUrl, {
      method: "POST",
      body: snapshot(),
      headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(async (response) => {
        const answer = await response.json().catch(() => ({}));
        if (response.ok) {
          status.textContent = answer.label || "Saved";
          status.classList.remove("error");
        } else {
          status.textContent = answer.error || "Not saved (" + response.status + ")";
          status.classList.add("error");
        }
      })
      .catch(() => {
        dirty = true;
        status.textContent = "Not saved: the server cannot be reached; retrying.";
        status.classList.add("error");
      })
      .finally(() => {
        saving = null;
      });
    return saving;
  }

  for (const area of sections) {
    area.addEventListener("input", () => {
      dirty = true;
      status.textContent = "Editing…";
    });
    area.addEventListener("change", save);
  }
  window.setInterval(save, seconds * 1000);
  window.addEventListener("beforeunload", (event) => {
    if (dirty) {
      save();
      event.preventDefault();
    }
  });

  // Signing asks for the password again, in a dialog.
  const dialog = document.getElementById("sign-dialog");
  const finalInput = document.getElementById("id_final");
  const kind = document.getElementById("sign-kind");
  for (const id of ["open-sign", "open-sign-final"]) {
    const button = document.getElementById(id);
    button.addEventListener("click", () => {
      const final = button.dataset.final === "1";
      finalInput.value = final ? "on" : "";
      kind.textContent = final ? "final" : "preliminary";
      dialog.showModal();
      dialog.querySelector("input[type=password]").focus();
    });
  }
  document.getElementById("cancel-sign").addEventListener("click", () => dialog.close());
  editor.addEventListener("submit", () => {
    dirty = false; // the sign form carries the sections itself
  });

  // Dictation: record in the browser, upload, play back.
  const dictation = document.getElementById("dictation");
  if (!dictation) return;
  const start = document.getElementById("record-start");
  const stop = document.getElementById("record-stop");
  const recordStatus = document.getElementById("record-status");
  const list = document.getElementById("dictations");
  let recorder = null;
  let chunks = [];
  let recorded = 0;
  let startedAt = 0;

  if (!window.MediaRecorder || !navigator.mediaDevices) {
    start.disabled = true;
    recordStatus.textContent = "This browser cannot record; upload a file instead.";
    return;
  }

  function preferredType() {
    for (const type of ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"]) {
      if (MediaRecorder.isTypeSupported(type)) return type;
    }
    return "";
  }

  async function upload(blob, duration) {
    const body = new FormData();
    const type = (blob.type || "audio/webm").split(";")[0];
    const extension = type.split("/")[1] || "webm";
    body.append("audio", blob, "dictation." + extension);
    body.append("duration", duration.toFixed(1));
    recordStatus.textContent = "Uploading…";
    const response = await fetch(dictation.dataset.uploadUrl, {
      method: "POST",
      body: body,
      headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      credentials: "same-origin",
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      recordStatus.textContent = answer.error || "Upload failed (" + response.status + ")";
      return;
    }
    recordStatus.textContent = "Recording attached; it goes to transcription.";
    const item = document.createElement("li");
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = answer.url;
    item.append(audio, " " + duration.toFixed(0) + " s");
    list.append(item);
  }

  start.addEventListener("click", async () => {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      recordStatus.textContent = "No microphone: " + error.message;
      return;
    }
    const type = preferredType();
    recorder = type ? new MediaRecorder(stream, { mimeType: type }) : new MediaRecorder(stream);
    chunks = [];
    recorded = 0;
    recorder.addEventListener("dataavailable", (event) => {
      if (!event.data.size) return;
      chunks.push(event.data);
      recorded += event.data.size;
      if (recorder.state === "recording") {
        recordStatus.textContent = "Recording… " + Math.ceil(recorded / 1024) + " kB";
      }
    });
    recorder.addEventListener("stop", () => {
      for (const track of stream.getTracks()) track.stop();
      const duration = (performance.now() - startedAt) / 1000;
      upload(new Blob(chunks, { type: recorder.mimeType || type }), duration);
    });
    startedAt = performance.now();
    recorder.start(1000); // a chunk each second: the size shown says the microphone works
    start.disabled = true;
    stop.disabled = false;
    recordStatus.textContent = "Recording…";
  });

  stop.addEventListener("click", () => {
    if (recorder && recorder.state !== "inactive") recorder.stop();
    start.disabled = false;
    stop.disabled = true;
  });
})();
