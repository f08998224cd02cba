// Lookout viewer page: a tile per camera with its live MJPEG stream, the current label and the
// boxes of the objects detectors found (from the event stream), fps and latency, and the label
// changes: the recent ones of every camera, or one camera's history with thumbnails, older
// changes loaded on scroll. Plain JS, no build.
'use strict';

(() => {
  // Browsers open at most 6 HTTP/1.1 connections to one host and every MJPEG stream keeps one:
  // over HTTP/1.1 the first cameras stream live, the others refresh a snapshot on each frame
  // event, which leaves connections for the event stream and the API. Over HTTP/2 (the viewer
  // serving HTTPS, --tls-cert) every stream shares one connection: all cameras stream live, up
  // to a bound well under the viewer's --max-clients (64).
  const navigation = performance.getEntriesByType('navigation')[0];
  const protocol = (navigation && navigation.nextHopProtocol) || 'http/1.1';
  const multiplexed = protocol === 'h2' || protocol === 'h3';
  const MAX_LIVE_STREAMS = multiplexed ? 32 : 4;
  document.body.dataset.protocol = protocol;
  const MAX_CHANGES = 50;
  const STALE_MS = 5000;
  // A colour per class id, the same as the server-side overlay's (src/overlay.rs).
  const CLASS_COLOURS = ['#3ddc84', '#4ea1ff', '#f0b429', '#f2555a', '#b48cff', '#2ad4d4',
    '#ff8a3d', '#ff6fb5', '#a3d939', '#e6edf3', '#c08b5c', '#ffd6a5'];

  const overlay = new URLSearchParams(location.search).get('overlay');
  // With the server-side overlay the boxes are in the image already.
  const burnedIn = overlay !== null && overlay !== '0' && overlay !== 'false';
  const grid = document.getElementById('grid');
  const empty = document.getElementById('empty');
  const feed = document.getElementById('changes');
  const noChanges = document.getElementById('no-changes');
  const picker = document.getElementById('history-camera');
  const moreMarker = document.getElementById('history-more');
  // '' : the recent changes of every camera; a camera id: that camera's history.
  let shown = '';
  // The oldest offset shown of the camera's history, and whether older ones may exist.
  let oldest = null;
  let more = false;
  let loadingOlder = false;
  const pickable = new Set();
  const status = document.getElementById('status');
  const summary = document.getElementById('summary');
  const tiles = new Map();
  const seenChanges = new Set();
  // The viewer's clock minus this browser's, in ms. Each event gives a lower bound (it was
  // sent before it arrived); the largest of the recent ones is the least delayed.
  let skew = 0;
  const skews = [];
  function clockSample(sentMs) {
    skews.push(sentMs - Date.now());
    if (skews.length > 40) skews.shift();
    skew = Math.max(...skews);
  }
  let live = 0;

  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const camPath = (id) => '/cameras/' + encodeURIComponent(id);
  const pct = (s) => Math.round(s * 100) + '%';
  const ms = (v) => (v < 1000 ? Math.round(v) + ' ms' : (v / 1000).toFixed(1) + ' s');
  const clock = (t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });

  function streamUrl(id) {
    let url = camPath(id) + '/stream.mjpeg';
    if (overlay !== null) url += '?overlay=' + encodeURIComponent(overlay);
    return url;
  }

  function startImage(t) {
    if (t.live) {
      t.img.src = streamUrl(t.id) + (t.img.src ? (overlay !== null ? '&' : '?') + 'r=' + Date.now() : '');
    } else {
      refreshSnapshot(t);
    }
  }

  // One snapshot request at a time per tile; the image keeps showing until the next loaded.
  function refreshSnapshot(t) {
    if (t.loading) return;
    t.loading = true;
    t.img.src = camPath(t.id) + '/snapshot.jpg?s=' + t.seq;
  }

  function tile(id) {
    let t = tiles.get(id);
    if (t) return t;
    const root = el('article', 'tile');
    root.dataset.camera = id;
    const video = el('div', 'video');
    const img = el('img');
    img.alt = 'Live view of ' + id;
    const badge = el('span', 'badge', 'LIVE');
    const boxes = el('div', 'boxes');
    boxes.hidden = burnedIn;
    video.append(img, boxes, badge);
    const label = el('span', 'label none', 'waiting for a label');
    const score = el('span', 'score');
    const head = el('div', 'head');
    head.append(label, score);
    const bar = el('div', 'bar');
    const fill = el('div', 'fill');
    bar.append(fill);
    const fps = el('span', 'fps', '– fps');
    const latency = el('span', 'latency', '– latency');
    latency.title = 'capture time to shown, against the viewer\u2019s clock';
    const size = el('span', 'size');
    const meta = el('div', 'meta');
    meta.append(el('span', 'cam', id), fps, latency, size);
    const info = el('div', 'info');
    info.append(head, bar, meta);
    root.append(video, info);

    t = { id, root, video, img, badge, boxes, label, score, fill, fps, latency, size,
          seq: -1, labelSeq: -1, objectSeqs: new Map(), lastFrame: 0, lastObjects: 0,
          live: live < MAX_LIVE_STREAMS, loading: false };
    if (t.live) live += 1;
    root.dataset.view = t.live ? 'stream' : 'snapshot';
    img.addEventListener('load', () => { t.loading = false; });
    img.addEventListener('error', () => {
      t.loading = false;
      if (t.live) setTimeout(() => startImage(t), 2000);
    });
    tiles.set(id, t);

    const after = [...tiles.keys()].sort().find((k) => k > id);
    grid.insertBefore(root, after ? tiles.get(after).root : null);
    empty.hidden = true;
    summary.textContent = tiles.size + (tiles.size === 1 ? ' camera' : ' cameras');
    startImage(t);
    return t;
  }

  function onFrame(f) {
    const t = tile(f.camera);
    if (f.sequence <= t.seq) return;
    t.seq = f.sequence;
    t.root.dataset.sequence = String(f.sequence);
    t.lastFrame = Date.now();
    t.root.classList.remove('stale');
    t.badge.textContent = 'LIVE';
    if (f.sent_ms) clockSample(f.sent_ms);
    if (f.fps !== undefined) t.fps.textContent = f.fps.toFixed(1) + ' fps';
    if (f.capture_ms) t.latency.textContent = ms(Math.max(0, Date.now() + skew - f.capture_ms)) + ' latency';
    if (f.width && f.height) {
      t.size.textContent = f.width + '×' + f.height;
      t.video.style.aspectRatio = f.width + ' / ' + f.height;
    }
    if (!t.live) refreshSnapshot(t);
  }

  function onLabel(camera, p) {
    const t = tile(camera);
    if (p.sequence <= t.labelSeq) return; // predictions arrive out of order: never step back
    t.labelSeq = p.sequence;
    t.root.dataset.labelSequence = String(p.sequence);
    t.root.dataset.label = p.name;
    t.label.textContent = p.name;
    t.label.classList.remove('none');
    t.label.title = p.name + (p.model ? ' (' + p.model + ')' : '');
    t.score.textContent = pct(p.score);
    t.fill.style.width = pct(p.score);
    t.fill.classList.toggle('low', p.score < 0.4);
  }

  // A detector's objects in a frame: they replace that detector's boxes on the tile. Boxes
  // are in fractions of the frame, which the video element shows whole (its aspect ratio is
  // the frame's).
  function onObjects(camera, o) {
    const t = tile(camera);
    const model = o.model || '';
    if (o.sequence <= (t.objectSeqs.get(model) ?? -1)) return; // never step back
    t.objectSeqs.set(model, o.sequence);
    t.lastObjects = Date.now();
    for (const b of [...t.boxes.children]) if (b.dataset.model === model) b.remove();
    for (const d of o.objects) {
      const box = el('div', 'box');
      box.dataset.model = model;
      box.dataset.label = d.name;
      box.style.setProperty('--c', CLASS_COLOURS[d.class_id % CLASS_COLOURS.length]);
      box.style.left = (d.x * 100) + '%';
      box.style.top = (d.y * 100) + '%';
      box.style.width = (d.width * 100) + '%';
      box.style.height = (d.height * 100) + '%';
      if (d.y < 0.08) box.classList.add('at-top');
      box.title = d.name + ' ' + pct(d.score) + (model ? ' (' + model + ')' : '');
      box.append(el('span', 'tag', d.name + ' ' + pct(d.score)));
      t.boxes.append(box);
    }
    t.root.dataset.objects = o.objects.map((d) => d.name).join(',');
    t.root.dataset.objectsSequence = String(o.sequence);
  }

  // A camera in the history picker, in order.
  function pickableCamera(id) {
    if (pickable.has(id)) return;
    pickable.add(id);
    const option = el('option', '', id);
    option.value = id;
    const after = [...picker.options].slice(1).find((o) => o.value > id);
    picker.insertBefore(option, after || null);
  }

  function thumbUrl(c) {
    return '/api/cameras/' + encodeURIComponent(c.camera) + '/history/' + c.partition + '/' + c.offset + '.jpg';
  }

  function onChange(c, fresh) {
    pickableCamera(c.camera);
    if (shown !== '' && c.camera !== shown) return;
    const key = c.camera + '\u0000' + c.sequence + '\u0000' + (c.model || '');
    if (seenChanges.has(key)) return;
    seenChanges.add(key);
    const li = el('li', fresh ? 'fresh' : '');
    li.dataset.camera = c.camera;
    li.dataset.offset = String(c.offset);
    if (c.thumbnail && c.offset >= 0) {
      const img = el('img', 'thumb');
      img.loading = 'lazy';
      img.alt = c.camera + ': ' + (c.current ? c.current.name : '');
      img.src = thumbUrl(c);
      li.classList.add('has-thumb');
      li.append(img);
    }
    li.dataset.model = c.model || '';
    if (c.model) li.title = 'by ' + c.model;
    const what = el('span', 'what');
    what.append(el('span', 'cam', c.camera), ' ');
    if (c.objects) {
      // A detector's object event: what appeared (+) and what left (-).
      what.append(el('span', 'new objects', c.objects));
    } else {
      if (c.previous) what.append(el('span', 'old', c.previous.name), ' → ');
      what.append(el('span', 'new', c.current ? c.current.name : '?'));
      if (c.current) what.append(' ', el('span', 'muted', pct(c.current.score)));
    }
    if (c.change_id) li.title = (li.title ? li.title + '; ' : '') + 'lookout snapshot ' + c.change_id + ' > change.jpg';
    const when = c.time_ms ? (shown === '' ? clock(c.time_ms) : new Date(c.time_ms).toLocaleString()) : '';
    li.append(el('span', 'time', when), what);
    if (fresh) feed.prepend(li); else feed.append(li);
    // The recent feed is bounded; a camera's history grows as the page scrolls.
    while (shown === '' && feed.children.length > MAX_CHANGES) feed.lastElementChild.remove();
    noChanges.hidden = true;
    const t = tiles.get(c.camera);
    if (fresh && t) {
      t.root.classList.add('changed');
      setTimeout(() => t.root.classList.remove('changed'), 1500);
    }
  }

  // One page of the shown camera's history, older than what is shown.
  async function loadHistory() {
    if (loadingOlder || shown === '') return;
    loadingOlder = true;
    const camera = shown;
    try {
      let url = '/api/cameras/' + encodeURIComponent(camera) + '/history?limit=20';
      if (oldest !== null) url += '&before=' + oldest;
      const page = await fetch(url).then((r) => r.json());
      if (camera !== shown) return;
      for (const c of page.changes) {
        onChange(c, false);
        if (c.offset >= 0 && (oldest === null || c.offset < oldest)) oldest = c.offset;
      }
      more = page.more && page.changes.length > 0;
      moreMarker.hidden = !more;
      if (feed.children.length) noChanges.hidden = true;
    } catch (e) {
      console.warn('cannot load the history', e);
    } finally {
      loadingOlder = false;
    }
    if (more) {
      older.unobserve(moreMarker);
      older.observe(moreMarker);
    }
  }

  function show(camera) {
    shown = camera;
    oldest = null;
    more = false;
    feed.replaceChildren();
    seenChanges.clear();
    noChanges.hidden = false;
    moreMarker.hidden = true;
    if (camera === '') {
      load();
    } else {
      loadHistory();
    }
  }

  picker.addEventListener('change', () => show(picker.value));
  // Scrolling to the end of a camera's history loads older changes (and again while the end
  // stays in view).
  const older = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && more) loadHistory();
  });
  older.observe(moreMarker);

  async function load() {
    try {
      const [cameras, changes] = await Promise.all([
        fetch('/api/cameras').then((r) => r.json()),
        fetch('/api/changes').then((r) => r.json()),
      ]);
      for (const c of cameras) {
        pickableCamera(c.id);
        const t = tile(c.id);
        if (c.sequence !== null && c.sequence > t.seq) {
          t.seq = c.sequence;
          t.root.dataset.sequence = String(c.sequence);
          t.lastFrame = Date.now();
          t.fps.textContent = c.fps.toFixed(1) + ' fps';
          if (c.width && c.height) {
            t.size.textContent = c.width + '×' + c.height;
            t.video.style.aspectRatio = c.width + ' / ' + c.height;
          }
        }
        if (c.label) onLabel(c.id, c.label);
        for (const d of c.detections || []) onObjects(c.id, d);
      }
      if (shown === '') for (const c of changes) onChange(c, false);
    } catch (e) {
      console.warn('cannot load the viewer state', e);
    }
  }

  function connect() {
    const events = new EventSource('/api/events');
    let wasDown = false;
    const on = (name, fn) => events.addEventListener(name, (e) => fn(JSON.parse(e.data)));
    on('hello', (h) => clockSample(h.server_ms));
    on('frame', onFrame);
    on('prediction', (p) => onLabel(p.camera, { sequence: p.sequence, name: p.label, score: p.score, model: p.model }));
    on('objects', (o) => onObjects(o.camera, o));
    on('change', (c) => onChange(c, true));
    events.onopen = () => {
      status.dataset.state = 'live';
      status.textContent = 'live';
      if (wasDown) {
        wasDown = false;
        for (const t of tiles.values()) startImage(t);
        load();
      }
    };
    events.onerror = () => {
      wasDown = true;
      status.dataset.state = 'down';
      status.textContent = 'reconnecting';
    };
  }

  setInterval(() => {
    const now = Date.now();
    for (const t of tiles.values()) {
      if (t.lastFrame && now - t.lastFrame > STALE_MS && !t.root.classList.contains('stale')) {
        t.root.classList.add('stale');
        t.badge.textContent = 'NO SIGNAL';
        t.fps.textContent = '0.0 fps';
      }
      // No detector has spoken for a while: its boxes no longer say where things are.
      if (t.lastObjects && now - t.lastObjects > STALE_MS && t.boxes.children.length) {
        t.boxes.replaceChildren();
        t.root.dataset.objects = '';
      }
    }
  }, 1000);

  connect();
  load();
})();
