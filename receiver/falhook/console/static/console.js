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
      const state = next.querySelector(".facts");
      const current = document.querySelector(".facts");
      if (state && current) current.replaceWith(state);
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
    });
  }

  // A preview whose file is gone (fal's URL expired, a 404) becomes a placeholder.
  document.addEventListener("error", (e) => {
    if (!(e.target instanceof HTMLImageElement)) return;
    const placeholder = document.createElement("span");
    placeholder.className = "ph";
    placeholder.textContent = "gone";
    placeholder.title = "the file could not be loaded";
    e.target.replaceWith(placeholder);
  }, true);

  rowsPage();
  eventPage();
  copying();
  bulkReplay();
})();
