"use strict";
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 5000;
  const HOUR = 3600;
  // Samples of the server's counters, oldest first, the last hour's.
  let samples = [];
  let updates = 0;

  const $ = (id) => document.getElementById(id);
  const set = (id, text, value) => {
    const element = $(id);
    element.textContent = text;
    if (value !== undefined) element.dataset.value = String(value);
  };
  const count = (n) => n.toLocaleString("en-US");
  const size = (n) => {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) {
      n /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(n) : n.toFixed(n >= 100 ? 0 : 1)) + " " + units[unit];
  };
  const perSecond = (n) => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));
  const percent = (part, whole) => (whole > 0 ? ((100 * part) / whole).toFixed(1) + "%" : "–");
  const duration = (seconds) => {
    const h = Math.floor(seconds / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    return h > 0 ? h + " h " + m + " min" : m > 0 ? m + " min" : seconds + " s";
  };
  const gain = (from, to, field) => Math.max(0, field(to) - field(from));

  // The newest sample at least `age` seconds before `now`, else the oldest.
  const before = (points, now, age) => {
    let found = points[0];
    for (const point of points) {
      if (point.t <= now.t - age) found = point;
    }
    return found;
  };

  // Per-second rates of `field` between consecutive points.
  const rates = (points, field) => {
    const out = [];
    for (let i = 1; i < points.length; i += 1) {
      const elapsed = points[i].t - points[i - 1].t;
      if (elapsed > 0) {
        out.push({ t: points[i].t, v: gain(points[i - 1], points[i], field) / elapsed });
      }
    }
    return out;
  };

  const node = (parent, name, attributes, text) => {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    if (text !== undefined) element.textContent = text;
    parent.appendChild(element);
    return element;
  };

  // A line chart of the last hour: `lines` of {cls, points: [{t, v}]},
  // dashed `limits` of {v, cls}.
  const chart = (id, now, lines, limits, format) => {
    const svg = $(id);
    const width = Math.max(300, Math.round(svg.getBoundingClientRect().width) || 600);
    const height = 140;
    const left = 56;
    const bottom = 16;
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.replaceChildren();
    const values = lines.flatMap((line) => line.points.map((p) => p.v));
    const top = Math.max(1e-9, ...values, ...limits.map((l) => l.v)) * 1.1;
    const x = (t) => left + ((t - (now - HOUR)) / HOUR) * (width - left - 4);
    const y = (v) => height - bottom - (v / top) * (height - bottom - 6);
    for (const fraction of [0, 0.5, 1]) {
      const v = (top / 1.1) * fraction;
      node(svg, "line", { class: "grid", x1: left, x2: width, y1: y(v), y2: y(v) });
      node(svg, "text", { x: 2, y: y(v) + 3 }, format(v));
    }
    for (const [label, t] of [["−60 min", now - HOUR], ["−30 min", now - HOUR / 2], ["now", now]]) {
      node(svg, "text", { x: Math.min(x(t), width - 24), y: height - 3 }, label);
    }
    for (const limit of limits) {
      node(svg, "line", { class: "limit " + limit.cls, x1: left, x2: width, y1: y(limit.v), y2: y(limit.v) });
    }
    for (const line of lines) {
      const points = line.points.filter((p) => p.t >= now - HOUR);
      node(svg, "polyline", {
        class: "series " + line.cls,
        points: points.map((p) => x(p.t).toFixed(1) + "," + y(p.v).toFixed(1)).join(" "),
      });
    }
  };

  const diskBar = (answer, now) => {
    const svg = $("disk-bar");
    svg.replaceChildren();
    const whole = Math.max(answer.hard_limit, now.disk_bytes, 1);
    const at = (bytes) => Math.min(1000, (1000 * bytes) / whole);
    node(svg, "rect", { class: "track", x: 0, y: 4, width: 1000, height: 16 });
    node(svg, "rect", { class: "used", x: 0, y: 4, width: at(now.disk_bytes), height: 16 });
    node(svg, "line", { class: "limit", x1: at(answer.max_size), x2: at(answer.max_size), y1: 0, y2: 24 });
    node(svg, "line", { class: "limit hard", x1: at(answer.hard_limit) - 1, x2: at(answer.hard_limit) - 1, y1: 0, y2: 24 });
  };

  const render = (answer) => {
    const now = answer.now;
    const points = samples.concat(samples.length && samples[samples.length - 1].t >= now.t ? [] : [now]);
    const hourAgo = points[0];
    const recent = before(points, now, 5);
    const elapsed = Math.max(1, now.t - recent.t);
    const rate = (field) => perSecond(gain(recent, now, field) / elapsed);

    set("about", "version " + answer.version + ", up " + duration(answer.uptime_s));
    set("state", "updated " + new Date().toLocaleTimeString());
    $("state").classList.remove("offline");

    const hits = (s) => s.hits;
    const misses = (s) => s.misses;
    const hourHits = gain(hourAgo, now, hits);
    set("hit-rate", percent(hourHits, hourHits + gain(hourAgo, now, misses)));
    set("hit-rate-all", percent(now.hits, now.hits + now.misses));
    set("hits", count(now.hits), now.hits);
    set("misses", count(now.misses), now.misses);

    set("rate-total", rate((s) => s.http + s.grpc));
    set("rate-http", rate((s) => s.http) + "/s");
    set("rate-grpc", rate((s) => s.grpc) + "/s");
    set("requests-http", count(now.http), now.http);
    set("requests-grpc", count(now.grpc), now.grpc);

    set("rate-in", size(gain(recent, now, (s) => s.bytes_in) / elapsed) + "/s");
    set("rate-out", size(gain(recent, now, (s) => s.bytes_out) / elapsed) + "/s");
    set("bytes-in", size(now.bytes_in), now.bytes_in);
    set("bytes-out", size(now.bytes_out), now.bytes_out);

    set("disk-bytes", size(now.disk_bytes), now.disk_bytes);
    set("max-size", size(answer.max_size), answer.max_size);
    set("hard-limit", size(answer.hard_limit), answer.hard_limit);
    set("ac-blobs", count(now.ac_blobs), now.ac_blobs);
    set("cas-blobs", count(now.cas_blobs), now.cas_blobs);
    diskBar(answer, now);

    set("evictions", count(now.evictions), now.evictions);
    set("evictions-hour", count(gain(hourAgo, now, (s) => s.evictions)));
    set("uploads", count(now.uploads), now.uploads);
    set("backing", answer.backing ? rate((s) => s.backing_fetches + s.backing_uploads) + "/s" : "none");
    set("backing-fetches", count(now.backing_fetches), now.backing_fetches);
    set("backing-uploads", count(now.backing_uploads), now.backing_uploads);
    set("backing-errors", count(now.backing_errors), now.backing_errors);

    const minuteAgo = before(points, now, 60);
    const rows = answer.names.map((name, i) => {
      const of = (s) => s.namespaces[i] || 0;
      return {
        name: name === "" ? "(default)" : name,
        minute: gain(minuteAgo, now, of) / Math.max(1, now.t - minuteAgo.t),
        hour: gain(hourAgo, now, of),
        all: of(now),
      };
    });
    rows.sort((a, b) => b.hour - a.hour || b.all - a.all);
    $("namespaces").replaceChildren(
      ...rows.map((row) => {
        const tr = document.createElement("tr");
        for (const cell of [row.name, perSecond(row.minute), count(row.hour), count(row.all)]) {
          const td = document.createElement("td");
          td.textContent = cell;
          tr.appendChild(td);
        }
        return tr;
      }),
    );

    const plain = (v) => (v >= 1000 ? count(Math.round(v)) : perSecond(v));
    chart("chart-requests", now.t, [
      { cls: "s-http", points: rates(points, (s) => s.http) },
      { cls: "s-grpc", points: rates(points, (s) => s.grpc) },
    ], [], plain);
    const hitRates = [];
    for (let i = 1; i < points.length; i += 1) {
      const found = gain(points[i - 1], points[i], hits);
      const asked = found + gain(points[i - 1], points[i], misses);
      if (asked > 0) hitRates.push({ t: points[i].t, v: (100 * found) / asked });
    }
    chart("chart-hits", now.t, [{ cls: "s-hits", points: hitRates }], [{ v: 100, cls: "" }], (v) => v.toFixed(0));
    chart("chart-bytes", now.t, [
      { cls: "s-in", points: rates(points, (s) => s.bytes_in) },
      { cls: "s-out", points: rates(points, (s) => s.bytes_out) },
    ], [], size);
    chart("chart-disk", now.t, [
      { cls: "s-disk", points: points.map((s) => ({ t: s.t, v: s.disk_bytes })) },
    ], [{ v: answer.max_size, cls: "" }, { v: answer.hard_limit, cls: "hard" }], size);

    updates += 1;
    document.body.dataset.updates = String(updates);
  };

  const poll = async () => {
    try {
      const since = samples.length ? samples[samples.length - 1].t : 0;
      const response = await fetch("dashboard.json?since=" + since, { cache: "no-store" });
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      const answer = await response.json();
      samples = samples.concat(answer.samples).filter((s) => s.t >= answer.now.t - HOUR - 60);
      render(answer);
    } catch (error) {
      set("state", "offline: " + error.message + "; retrying");
      $("state").classList.add("offline");
    } finally {
      setTimeout(poll, POLL_MS);
    }
  };
  poll();
})();
