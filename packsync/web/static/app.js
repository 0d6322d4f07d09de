// packsync's page: keeps the view current without a reload, and searches as you type.
// Everything shown comes from the server as escaped HTML; this script adds no markup of its own.
// The view is the query string's (q, show, mapping, page): the refresh asks /view for the same one.
"use strict";
(() => {
  const view = document.getElementById("view");
  const box = document.getElementById("q");
  if (!view || !box) return;
  let etag = view.dataset.etag || "";
  let busy = false;
  let timer = 0;

  function current() {
    const params = new URLSearchParams(location.search);
    const query = box.value.trim();
    if (query) params.set("q", query); else params.delete("q");
    return params.toString();
  }

  async function refresh(force) {
    if (busy && !force) return;
    busy = true;
    try {
      const search = current();
      const headers = force ? {} : { "If-None-Match": etag };
      const answer = await fetch("/view" + (search ? "?" + search : ""), { headers, credentials: "same-origin" });
      if (answer.status === 200) {
        const html = await answer.text();
        // what the reader opened or closed stays so (the new view says each one's default)
        const opened = new Map([...view.querySelectorAll("details[id]")].map((node) => [node.id, node.open]));
        view.innerHTML = html;
        for (const node of view.querySelectorAll("details[id]")) {
          if (opened.has(node.id)) node.open = opened.get(node.id);
        }
        etag = answer.headers.get("ETag") || "";
        view.dataset.etag = etag;
        showTimes();
      }
    } catch (_error) {
      // the daemon restarting: the next round tries again
    } finally {
      busy = false;
    }
  }

  function showTimes() {
    const today = new Date().toDateString();
    for (const node of view.querySelectorAll("time[data-ts]")) {
      const when = new Date(Number(node.dataset.ts) * 1000);
      const short = node.classList.contains("short") && when.toDateString() === today;
      node.textContent = short ? when.toLocaleTimeString() : when.toLocaleString();
      node.dateTime = when.toISOString();
    }
  }

  box.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      const search = current();
      history.replaceState(null, "", search ? "/?" + search : "/");
      refresh(true);
    }, 200);
  });
  box.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const search = current();
    history.replaceState(null, "", search ? "/?" + search : "/");
    refresh(true);
  });
  showTimes();
  setInterval(() => { if (!document.hidden) refresh(false); }, 2000);
})();
