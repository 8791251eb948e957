// falhook console: progressive enhancement over server-rendered pages. Without this file
// every page and form still works; with it, lists and events update live (Server-Sent
// Events), JSON copies to the clipboard, and bulk replays show their progress.
"use strict";

(function () {
  const csrf = document.body.dataset.csrf || "";
  const base = document.body.dataset.base || "/console";  // under the app's root_path
  const MAX_ROWS = 200;  // rows a live list keeps
  const MAX_FETCH = 100;  // rows asked for at once

  // The stream tells what changes after it opened: on each (re)open, onOpen catches up with
  // what changed since the page was rendered.
  function stream(onMessage, indicator, onOpen) {
    if (!window.EventSource) return;
    const source = new EventSource(base + "/api/stream");
    if (indicator) indicator.hidden = false;
    source.onopen = () => {
      if (indicator) indicator.dataset.state = "on";
      onOpen();
    };
    source.onerror = () => indicator && (indicator.dataset.state = "retry");
    source.addEventListener("event", (e) => {
      try { onMessage(JSON.parse(e.data)); } catch (err) { /* a malformed message: ignore */ }
    });
  }

  // Gather ids for a moment, then ask the server once for all of them.
  function batcher(flush, delay) {
    let pending = new Set();
    let timer = null;
    return (id) => {
      pending.add(id);
      if (timer) return;
      timer = setTimeout(() => {
        const ids = Array.from(pending);
        pending = new Set();
        timer = null;
        flush(ids);
      }, delay);
    };
  }

  function rowsPage() {
    const tbody = document.getElementById("rows");
    if (!tbody || !tbody.dataset.live) return;
    const filters = tbody.dataset.filters || "";
    const rowOf = (id) => Array.from(tbody.rows).find((r) => r.dataset.requestId === id);
    const rows = async (ids) => {
      // No ids: the newest page of rows (catching up after the stream (re)opened).
      const sep = filters ? "&" : "?";
      const query = ids ? sep + "ids=" + encodeURIComponent(ids.join(",")) : "";
      const response = await fetch(base + "/fragments/rows" + filters + query, { credentials: "same-origin" });
      if (!response.ok) return;
      const holder = document.createElement("tbody");
      holder.innerHTML = await response.text();
      const fresh = Array.from(holder.rows).reverse();
      for (const row of fresh) {
        const old = rowOf(row.dataset.requestId);
        if (old) { old.replaceWith(row); continue; }
        row.classList.add("fresh");
        tbody.insertBefore(row, tbody.firstChild);
      }
      while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);  // older ones: "Older →"
      const empty = document.getElementById("empty");
      if (empty && tbody.rows.length) empty.hidden = true;
    };
    // A burst of webhooks: the newest are what shows.
    const refresh = batcher((all) => rows(all.slice(-MAX_FETCH)), 250);
    stream((msg) => {
      if (msg.kind === "accepted" || rowOf(msg.request_id)) refresh(msg.request_id);
    }, document.getElementById("live"), () => rows(null));
  }

  function eventPage() {
    const head = document.getElementById("event");
    if (!head) return;
    const id = head.dataset.requestId;
    const refresh = batcher(async () => {
      const response = await fetch(location.pathname, { credentials: "same-origin" });
      if (!response.ok) return;
      const next = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const part of ["deliveries", "files"]) {
        const now = document.getElementById(part);
        const then = next.getElementById(part);
        // Files are swapped only when they changed: a playing video is left alone.
        if (now && then && now.innerHTML !== then.innerHTML) now.replaceWith(then);
      }
      for (const selector of [".facts", ".top nav"]) {  // the state, the dead count
        const then = next.querySelector(selector);
        const now = document.querySelector(selector);
        if (then && now && then.innerHTML !== now.innerHTML) now.replaceWith(then);
      }
    }, 150);
    stream((msg) => { if (msg.request_id === id) refresh(id); }, null, () => refresh(id));
  }

  function copying() {
    document.addEventListener("click", (e) => {
      const button = e.target.closest("[data-copy], [data-copy-target]");
      if (!button) return;
      const target = button.dataset.copyTarget && document.getElementById(button.dataset.copyTarget);
      const text = target ? target.textContent : button.dataset.copy;
      if (navigator.clipboard && text != null) {
        navigator.clipboard.writeText(text).then(() => {
          const label = button.textContent;
          button.textContent = "Copied";
          setTimeout(() => (button.textContent = label), 1200);
        });
      }
    });
    document.addEventListener("click", (e) => {
      const button = e.target.closest("[data-tree]");
      if (!button) return;
      const open = button.dataset.tree === "open";
      document.querySelectorAll("#payload-tree details").forEach((d) => (d.open = open));
    });
  }

  function bulkReplay() {
    const form = document.getElementById("bulk-replay");
    if (!form) return;
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const data = new FormData(form);
      const body = {};
      for (const [key, value] of data.entries()) if (key !== "csrf" && value !== "") body[key] = value;
      body.force = data.get("force") === "1";
      const total = Number(form.dataset.count) || 0;
      const box = document.getElementById("bulk-progress");
      const bar = box.querySelector("progress");
      const status = document.getElementById("bulk-status");
      box.hidden = false;
      form.querySelector("button[type=submit]").disabled = true;
      let cursor = null, events = 0, scheduled = 0;
      for (let round = 0; round < 100000; round++) {
        const response = await fetch(base + "/api/replay", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
          body: JSON.stringify({ ...body, limit: 200, cursor }),
        });
        const answer = await response.json();
        if (!response.ok) { status.textContent = answer.detail || "failed"; return; }
        events += answer.events; scheduled += answer.scheduled;
        bar.value = Math.min(total, events);
        status.textContent = `${events} of ${total} events, ${scheduled} deliveries scheduled`;
        cursor = answer.next_cursor;
        if (!cursor) break;
      }
      status.textContent = `Done: ${scheduled} deliveries of ${events} events scheduled.`;
      status.id = "bulk-done";
      const next = document.getElementById("bulk-next");  // a way on: the events, live
      if (next) next.hidden = false;
    });
  }

  // A preview the browser cannot show (fal's URL expired or refused, a format it cannot
  // play) says so instead of a broken image or a black player that never starts.
  const MEDIA_ERRORS = {
    1: "loading was aborted",
    2: "a network error stopped the download",
    3: "the file could not be decoded",
    4: "the browser could not load or play it (refused, gone, or not a playable format)",
  };
  function unavailable(media) {
    const where = media.currentSrc || media.src || "";
    let host = "";
    try { host = new URL(where, location.href).host; } catch (err) { /* no URL */ }
    const why = media instanceof HTMLVideoElement
      ? MEDIA_ERRORS[(media.error && media.error.code) || 4]
      : "the browser could not load it";
    const note = document.createElement("p");
    note.className = "ph unavailable";
    note.setAttribute("role", "note");
    note.textContent = `preview not available: ${why}${host && host !== location.host ? ` (from ${host})` : ""}`;
    return note;
  }
  document.addEventListener("error", (e) => {
    const target = e.target;
    if (target instanceof HTMLVideoElement && target.closest(".preview")) {
      target.replaceWith(unavailable(target));
    } else if (target instanceof HTMLImageElement && target.closest(".preview")) {
      (target.closest("a") || target).replaceWith(unavailable(target));
    } else if (target instanceof HTMLImageElement) {  // a list's thumbnail
      const placeholder = document.createElement("span");
      placeholder.className = "ph";
      placeholder.textContent = "gone";
      placeholder.title = "the file could not be loaded";
      target.replaceWith(placeholder);
    }
  }, true);

  // The overview follows the store: on a change, at most every few seconds, its figures
  // and charts are read again (one request, however many changes came).
  function overviewPage() {
    const holder = document.getElementById("overview");
    if (!holder || !holder.dataset.live) return;
    let last = 0;
    let timer = null;
    const reload = async () => {
      timer = null;
      last = Date.now();
      const response = await fetch(location.pathname, { credentials: "same-origin" });
      if (!response.ok) return;
      const next = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = next.getElementById("overview");
      const now = document.getElementById("overview");
      if (fresh && now && fresh.innerHTML !== now.innerHTML) now.replaceWith(fresh);
    };
    const soon = () => {
      if (timer) return;
      timer = setTimeout(reload, Math.max(250, OVERVIEW_EVERY - (Date.now() - last)));
    };
    stream(soon, document.getElementById("live"), soon);
  }
  const OVERVIEW_EVERY = 3000;  // ms between two reads of the overview at most

  // A chart's bucket under the pointer (or tapped) is read out below it.
  function chartReadouts() {
    const show = (e) => {
      const hit = e.target.closest && e.target.closest(".hits rect");
      if (!hit) return;
      const figure = hit.closest(".chart");
      figure.querySelectorAll(".hits rect.on").forEach((r) => r.classList.remove("on"));
      hit.classList.add("on");
      figure.querySelector(".readout").textContent = hit.dataset.tip;
    };
    document.addEventListener("pointerover", show);
    document.addEventListener("click", show);
  }

  rowsPage();
  eventPage();
  overviewPage();
  chartReadouts();
  copying();
  bulkReplay();
})();
