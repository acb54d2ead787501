/* gradalign report: draws the whole page from the embedded JSON (#gradalign-data).

   It decodes the compact records (the layout is described in gradalign_client/html_report.py), keeps a
   light view of each record for filters and charts, and expands a node's full records only when the
   node is shown; only the selected tree's rollouts are drawn. Charts are inline SVG built as strings.
   It knows nothing of how the numbers were computed: intervals and tests come from the run's report,
   and this script computes only means and quartiles (and says so where it does). */
(function () {
  'use strict';

  // ------------------------------------------------------------------------------------ data
  const SCRIPT_START = +performance.now().toFixed(1);
  const blob = JSON.parse(document.getElementById('gradalign-data').textContent);
  const F = blob.fields;
  const ix = (names) => Object.fromEntries(names.map((n, i) => [n, i]));
  const NF = ix(F.node);
  const TF = ix(F.teacher);
  const RF = ix(F.record);
  const NODE_CANDS = F.node.length; // position of the candidate rows in a node row
  const TEACHER_CANDS = F.teacher.length + 1; // position of the candidates' q in a teacher row
  const R = blob.report || null;

  // token id -> text: the texts given with the page (token_texts), then every candidate's
  const vocab = new Map(Object.entries(blob.vocab || {}).map(([k, v]) => [+k, v]));
  const recs = blob.records.map(lightRecord);
  const teachers = uniq(recs.map((r) => r.teacher));
  const methods = uniq(recs.map((r) => r.method));
  const questions = uniq(recs.map((r) => r.qid));
  const trees = indexTrees();
  const treeInfo = Object.fromEntries((blob.trees || []).map((t) => [t.tree_id, t]));
  const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#b07aa1', '#e15759', '#76b7b2', '#edc948', '#9c755f', '#ff9da7', '#bab0ac'];
  const teacherColor = (t) => PALETTE[teachers.indexOf(t) % PALETTE.length];

  const DECODE_MS = +(performance.now() - SCRIPT_START).toFixed(1);
  const SELFTEST = location.hash === '#selftest';
  // The self-test is read through --dump-dom: without the blob the DOM it serialises is small.
  if (SELFTEST) document.getElementById('gradalign-data').textContent = '';
  const S = { teacher: '', method: '', question: '', split: '', tree: null, rollout: null, vt: teachers[0], vm: methods[0], node: null };

  function lightRecord(entry, i) {
    if (!Array.isArray(entry)) return lightRaw(entry.raw, i);
    const t = blob.teachers[entry[0]];
    const n = blob.nodes[t[0]];
    for (const c of n[NODE_CANDS]) vocab.set(c[0], c[1]);
    const rollouts = n[NF.rollout_indices];
    return {
      i: i,
      teacher: t[1 + TF.teacher],
      method: entry[1 + RF.method],
      cos: entry[1 + RF.cosine],
      skip: entry[1 + RF.skip_reason],
      qid: n[NF.question_id],
      tree: n[NF.tree_id],
      rep: n[NF.rollout_index],
      depth: n[NF.depth],
      T: n[NF.path_length],
      nd: n[NF.normalized_depth],
      rc: n[NF.rollout_correct],
      rollouts: rollouts && rollouts.length ? rollouts : [n[NF.rollout_index]],
      prefix: n[NF.prefix_token_ids],
      sampled: n[NF.sampled_token_id],
    };
  }

  function lightRaw(r, i) {
    for (const c of r.candidates || []) vocab.set(c.token_id, c.token_text);
    return {
      i: i,
      teacher: r.teacher,
      method: r.method,
      cos: r.cosine,
      skip: r.skip_reason,
      qid: r.question_id,
      tree: r.tree_id,
      rep: r.rollout_index,
      depth: r.depth,
      T: r.path_length,
      nd: r.normalized_depth,
      rc: r.rollout_correct,
      rollouts: r.rollout_indices && r.rollout_indices.length ? r.rollout_indices : [r.rollout_index],
      prefix: r.prefix_token_ids,
      sampled: r.sampled_token_id,
    };
  }

  /* The full record i, with the schema's field names (only for nodes being shown). */
  function expand(i) {
    const e = blob.records[i];
    if (!Array.isArray(e)) return e.raw;
    const t = blob.teachers[e[0]];
    const n = blob.nodes[t[0]];
    const r = {};
    F.node.forEach((f, k) => { r[f] = n[k]; });
    F.teacher.forEach((f, k) => { r[f] = t[k + 1]; });
    F.record.forEach((f, k) => { r[f] = e[k + 1]; });
    if (r.diagnostics) r.diagnostics = Object.fromEntries(F.diagnostics.map((f, k) => [f, r.diagnostics[k]]));
    r.candidates = n[NODE_CANDS].map((c, j) => {
      const o = Object.fromEntries(F.candidate.map((f, k) => [f, c[k]]));
      F.teacher_candidate.forEach((f, k) => { o[f] = t[TEACHER_CANDS][j][k]; });
      return o;
    });
    return r;
  }

  /* tree id -> {qid, nodes: Map(key -> node), rollouts: Map(r -> outcome)}; a node is keyed by its
     representative rollout and depth, which fix its prefix. */
  function indexTrees() {
    const out = new Map();
    for (const r of recs) {
      if (!out.has(r.tree)) out.set(r.tree, { id: r.tree, qid: r.qid, nodes: new Map(), rollouts: new Map() });
      const tree = out.get(r.tree);
      const key = r.tree + '|' + r.rep + '|' + r.depth;
      r.key = key;
      if (!tree.nodes.has(key)) tree.nodes.set(key, { key: key, depth: r.depth, rep: r.rep, rollouts: r.rollouts, rc: r.rc, nd: r.nd, T: r.T, prefix: r.prefix, sampled: r.sampled, recs: [] });
      tree.nodes.get(key).recs.push(r);
      for (const ro of r.rollouts) {
        // every rollout through a node that is not mixed shares its outcome
        const known = tree.rollouts.get(ro);
        tree.rollouts.set(ro, known === undefined || known === null ? r.rc : known);
      }
    }
    return out;
  }

  // ------------------------------------------------------------------------------------ helpers
  function uniq(xs) { return Array.from(new Set(xs)); }
  const fin = (x) => typeof x === 'number' && isFinite(x);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const f3 = (x) => (fin(x) ? x.toFixed(3) : '—');
  const s3 = (x) => (fin(x) ? (x >= 0 ? '+' : '') + x.toFixed(3) : '—');
  const fp = (p) => (!fin(p) ? '—' : p !== 0 && p < 0.001 ? p.toExponential(1) : p.toFixed(3));
  const outcome = (rc) => (rc === true ? 'correct' : rc === false ? 'incorrect' : 'mixed');
  const tokenText = (id) => (vocab.has(id) ? vocab.get(id) : '#' + id);
  const visible = (s) => (s === '' ? '∅' : String(s).replace(/\n/g, '↵').replace(/\t/g, '⇥'));
  const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
  const el = (id) => document.getElementById(id);

  const NEG = [178, 24, 43];
  const MID = [247, 247, 247];
  const POS = [33, 102, 172];
  function cosColor(c) {
    if (!fin(c)) return '#d0d7de';
    const t = Math.max(-1, Math.min(1, c));
    const end = t < 0 ? NEG : POS;
    return 'rgb(' + MID.map((m, k) => Math.round(m + (end[k] - m) * Math.abs(t))).join(',') + ')';
  }
  const inkOn = (c) => (fin(c) && Math.abs(c) > 0.55 ? '#fff' : '#1f2328');
  const cellStyle = (c) => 'background:' + cosColor(c) + ';color:' + inkOn(c);

  function quantile(sorted, p) {
    const h = (sorted.length - 1) * p;
    const lo = Math.floor(h);
    return sorted[lo] + (sorted[Math.min(lo + 1, sorted.length - 1)] - sorted[lo]) * (h - lo);
  }

  function boxStats(values) {
    const v = values.filter(fin).sort((a, b) => a - b);
    if (!v.length) return null;
    const q1 = quantile(v, 0.25), q3 = quantile(v, 0.75), iqr = q3 - q1;
    const inside = v.filter((x) => x >= q1 - 1.5 * iqr && x <= q3 + 1.5 * iqr);
    return { n: v.length, q1: q1, med: quantile(v, 0.5), q3: q3, lo: inside[0], hi: inside[inside.length - 1], out: v.filter((x) => x < inside[0] || x > inside[inside.length - 1]), mean: mean(v) };
  }

  /* A linear scale [d0, d1] -> [r0, r1]. */
  const scale = (d0, d1, r0, r1) => (x) => r0 + ((x - d0) / (d1 - d0 || 1)) * (r1 - r0);

  function niceTicks(lo, hi, count) {
    const step0 = (hi - lo) / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(step0 || 1)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    const out = [];
    for (let x = Math.ceil(lo / step) * step; x <= hi + 1e-9; x += step) out.push(Math.abs(x) < 1e-12 ? 0 : x);
    return out;
  }

  function yAxis(y, ticks, x0, x1, label) {
    let s = '';
    for (const t of ticks) {
      s += '<line class="' + (t === 0 ? 'zero' : 'grid') + '" x1="' + x0 + '" x2="' + x1 + '" y1="' + y(t) + '" y2="' + y(t) + '"/>';
      s += '<text x="' + (x0 - 4) + '" y="' + (y(t) + 4) + '" font-size="10" text-anchor="end">' + (+t.toFixed(2)) + '</text>';
    }
    if (label) s += '<text transform="translate(11,' + (y(ticks[0]) + y(ticks[ticks.length - 1])) / 2 + ') rotate(-90)" font-size="10.5" text-anchor="middle">' + esc(label) + '</text>';
    return s;
  }

  const svgOpen = (w, h, label) => '<svg width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + ' ' + h + '" role="img" aria-label="' + esc(label) + '">';

  function legendHtml() {
    return '<div class="legend"><span>cosine</span><svg width="160" height="22" role="img" aria-label="colour scale">' +
      '<defs><linearGradient id="cos-gradient"><stop offset="0" stop-color="' + cosColor(-1) + '"/><stop offset="0.5" stop-color="' + cosColor(0) + '"/><stop offset="1" stop-color="' + cosColor(1) + '"/></linearGradient></defs>' +
      '<rect x="10" y="2" width="140" height="10" fill="url(#cos-gradient)" stroke="#8c959f" stroke-width="0.5"/>' +
      '<text x="10" y="21" font-size="9.5" text-anchor="middle">-1</text><text x="80" y="21" font-size="9.5" text-anchor="middle">0</text><text x="150" y="21" font-size="9.5" text-anchor="middle">+1</text></svg>' +
      '<span><span class="swatch skipped"></span>skipped (reason on hover)</span><span><span class="swatch" style="background:#fff;border:1px dashed #8c959f"></span>no record</span></div>';
  }

  const teacherLegend = (names) => '<div class="legend">' + names.map((t) => '<span><span class="swatch" style="background:' + teacherColor(t) + '"></span>' + esc(t) + '</span>').join('') + '</div>';

  // ------------------------------------------------------------------------------------ filters
  const shownTeachers = () => (S.teacher ? [S.teacher] : teachers);
  const shownMethods = () => (S.method ? [S.method] : methods);
  const okTM = (t, m) => (!S.teacher || t === S.teacher) && (!S.method || m === S.method);
  const okQ = (r) => !S.question || r.qid === S.question;
  const okSplit = (r) => !S.split || outcome(r.rc) === S.split;
  const filtered = (withSplit) => recs.filter((r) => okTM(r.teacher, r.method) && okQ(r) && (!withSplit || okSplit(r)));

  function renderFilters() {
    const opt = (v, label, cur) => '<option value="' + esc(v) + '"' + (v === cur ? ' selected' : '') + '>' + esc(label) + '</option>';
    const sel = (id, name, values, cur, labels) => '<label>' + name + '<select id="' + id + '">' + opt('', 'all', cur) + values.map((v, k) => opt(v, labels ? labels[k] : v, cur)).join('') + '</select></label>';
    const qLabels = questions.map((q) => q + accuracyNote(q));
    el('filters').innerHTML = sel('f-teacher', 'Teacher', teachers, S.teacher) + sel('f-method', 'Method', methods, S.method) +
      sel('f-question', 'Question', questions, S.question, qLabels) + sel('f-split', 'Split', ['correct', 'incorrect', 'mixed'], S.split) +
      '<span class="note" id="f-count"></span>';
    for (const [id, key] of [['f-teacher', 'teacher'], ['f-method', 'method'], ['f-question', 'question'], ['f-split', 'split']]) {
      el(id).addEventListener('change', (e) => {
        S[key] = e.target.value;
        if (key === 'teacher' && S.teacher) S.vt = S.teacher;
        if (key === 'method' && S.method) S.vm = S.method;
        if (key === 'question') { S.tree = null; S.rollout = null; S.node = null; }
        renderAll();
      });
    }
  }

  function accuracyNote(qid) {
    const ts = Array.from(trees.values()).filter((t) => t.qid === qid).map((t) => treeInfo[t.id]).filter(Boolean);
    if (!ts.length) return '';
    const ok = ts.reduce((a, t) => a + t.correct, 0), n = ts.reduce((a, t) => a + t.rollouts, 0);
    return ' (' + ok + '/' + n + ' correct)';
  }

  // ------------------------------------------------------------------------------------ sections
  function sectionHtml(id, title) { return '<section id="' + id + '"><h2>' + esc(title) + '</h2><div class="body"></div></section>'; }
  const body = (id) => el(id).querySelector('.body');

  function layout() {
    el('app').innerHTML = sectionHtml('s-ranking', 'Ranking') +
      '<div class="grid2">' + sectionHtml('s-bars', 'Mean alignment per teacher') + sectionHtml('s-depth', 'Alignment against normalised depth') + '</div>' +
      sectionHtml('s-boxes', 'Correct vs incorrect rollouts') + sectionHtml('s-corr', 'Correlations of alignment with the diagnostics') +
      sectionHtml('s-questions', 'Per question') + sectionHtml('s-rollouts', 'Rollouts, token by token') + sectionHtml('s-run', 'The run');
  }

  function renderSubtitle() {
    const rc = blob.receipt || {};
    const student = rc.student ? (rc.student.name || rc.student.model || '') : '';
    const skipped = recs.filter((r) => !fin(r.cos)).length;
    el('subtitle').textContent = recs.length + ' records (' + skipped + ' skipped) · ' + trees.size + ' trees over ' + questions.length + ' questions · ' +
      teachers.length + ' teachers · ' + methods.length + ' methods' + (student ? ' · student ' + student : '') + (R ? '' : ' · no report given: means only, no intervals');
  }

  function renderRanking() {
    let rows;
    let note;
    if (R && R.ranking && R.ranking.length) {
      const all = Object.fromEntries((R.groups || []).filter((g) => g.split === 'all').map((g) => [g.teacher + '|' + g.method, g]));
      rows = R.ranking.filter((e) => okTM(e.teacher, e.method)).map((e) => Object.assign({}, e, { group: all[e.teacher + '|' + e.method] }));
      note = 'From the run’s report: mean cosine over every analysed node with its ' + Math.round(100 * (R.confidence || 0.95)) + '% cluster-bootstrap interval (' +
        (R.bootstrap_samples || 0) + ' resamples of whole ' + esc(R.bootstrap_unit || 'rollout') + 's). Rank 1 is the teacher to prefer for that method; overlapping intervals mean the data do not separate them. The question and split filters do not apply here.';
    } else {
      rows = [];
      for (const m of shownMethods()) {
        const ms = shownTeachers().map((t) => {
          const cs = recs.filter((r) => r.teacher === t && r.method === m && fin(r.cos)).map((r) => r.cos);
          return { method: m, teacher: t, mean_cosine: mean(cs), nodes: cs.length, mean_ci_low: null, mean_ci_high: null };
        }).sort((a, b) => (fin(b.mean_cosine) ? b.mean_cosine : -9) - (fin(a.mean_cosine) ? a.mean_cosine : -9));
        ms.forEach((e, k) => { e.rank = k + 1; rows.push(e); });
      }
      note = 'No report was given: mean cosine per teacher and method computed from the records, without intervals.';
    }
    const ends = rows.flatMap((e) => [e.mean_ci_low, e.mean_ci_high, e.mean_cosine]).filter(fin).concat([0]);
    const x = scale(Math.min.apply(null, ends), Math.max.apply(null, ends), 8, 172);
    const forest = (e) => {
      let s = svgOpen(180, 16, 'interval') + '<line class="zero" x1="' + x(0) + '" x2="' + x(0) + '" y1="0" y2="16"/>';
      if (fin(e.mean_ci_low) && fin(e.mean_ci_high)) s += '<line x1="' + x(e.mean_ci_low) + '" x2="' + x(e.mean_ci_high) + '" y1="8" y2="8" stroke="' + teacherColor(e.teacher) + '" stroke-width="2"/>';
      if (fin(e.mean_cosine)) s += '<circle cx="' + x(e.mean_cosine) + '" cy="8" r="3.5" fill="' + teacherColor(e.teacher) + '"/>';
      return s + '</svg>';
    };
    const head = '<tr><th class="l">method</th><th>rank</th><th class="l">teacher</th><th>mean cosine</th><th>interval</th><th class="l">(0 dashed)</th><th>nodes</th><th>weighted</th><th>fraction &gt; 0</th><th>skipped</th></tr>';
    const line = (e) => '<tr' + (e.rank === 1 ? ' style="font-weight:600"' : '') + '><td class="l">' + esc(e.method) + '</td><td>' + e.rank + '</td><td class="l"><span class="swatch" style="background:' + teacherColor(e.teacher) + '"></span>' + esc(e.teacher) + '</td>' +
      '<td style="' + cellStyle(e.mean_cosine) + '">' + s3(e.mean_cosine) + '</td><td>' + (fin(e.mean_ci_low) ? '[' + s3(e.mean_ci_low) + ', ' + s3(e.mean_ci_high) + ']' : '—') + '</td><td class="l">' + forest(e) + '</td><td>' + e.nodes + '</td>' +
      '<td>' + (e.group ? s3(e.group.weighted_cosine) : '—') + '</td><td>' + (e.group ? f3(e.group.fraction_positive) : '—') + '</td><td>' + (e.group ? e.group.skipped : '—') + '</td></tr>';
    body('s-ranking').innerHTML = '<p class="note">' + note + '</p><div class="scroll"><table id="ranking-table"><thead>' + head + '</thead><tbody>' + rows.map(line).join('') + '</tbody></table></div>' + screenedNote();
  }

  function screenedNote() {
    const s = (R && R.screened_out) || [];
    if (!s.length) return '';
    return '<p class="note">Left out by screening (success rate outside the band, no nodes): ' + s.map((q) => esc(q.question_id) + ' (' + q.successes + '/' + q.rollouts + ')').join(', ') + '.</p>';
  }

  function renderBars() {
    const split = S.split || 'all';
    const fromReport = R && R.groups && R.groups.length && !S.question;
    const groups = fromReport ? Object.fromEntries(R.groups.filter((g) => g.split === split).map((g) => [g.teacher + '|' + g.method, g])) : {};
    const ts = shownTeachers(), ms = shownMethods();
    const bars = [];
    const rs = fromReport ? [] : filtered(true);
    for (const m of ms) {
      for (const t of ts) {
        if (fromReport) {
          const g = groups[t + '|' + m];
          bars.push({ m: m, t: t, v: g ? g.mean_cosine : NaN, lo: g ? g.mean_ci_low : NaN, hi: g ? g.mean_ci_high : NaN, n: g ? g.nodes : 0 });
        } else {
          const cs = rs.filter((r) => r.teacher === t && r.method === m && fin(r.cos)).map((r) => r.cos);
          bars.push({ m: m, t: t, v: mean(cs), lo: NaN, hi: NaN, n: cs.length });
        }
      }
    }
    const vals = bars.flatMap((b) => [b.v, b.lo, b.hi]).filter(fin).concat([0]);
    let lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
    const pad = (hi - lo) * 0.1 || 0.1;
    lo -= pad; hi += pad;
    const bw = Math.max(12, Math.min(28, Math.floor(84 / ts.length))), left = 44, top = 10, ph = 170;
    const gw = Math.max(ts.length * bw + 24, 100); // room for the method's name under its group
    const width = Math.max(260, left + ms.length * gw + 10);
    const y = scale(lo, hi, top + ph, top);
    let s = svgOpen(width, top + ph + 34, 'mean cosine per teacher') + yAxis(y, niceTicks(lo, hi, 5), left, width - 6, 'mean cosine');
    ms.forEach((m, k) => {
      const gx = left + k * gw + (gw - ts.length * bw) / 2;
      ts.forEach((t, j) => {
        const b = bars[k * ts.length + j];
        const bx = gx + j * bw;
        if (fin(b.v)) {
          s += '<rect x="' + (bx + 1) + '" y="' + Math.min(y(0), y(b.v)) + '" width="' + (bw - 2) + '" height="' + Math.abs(y(0) - y(b.v)) + '" fill="' + teacherColor(t) + '"><title>' + esc(t + ' · ' + m + ': ' + s3(b.v) + (fin(b.lo) ? ' [' + s3(b.lo) + ', ' + s3(b.hi) + ']' : '') + ', ' + b.n + ' nodes') + '</title></rect>';
        }
        if (fin(b.lo) && fin(b.hi)) {
          const cx = bx + bw / 2;
          s += '<line x1="' + cx + '" x2="' + cx + '" y1="' + y(b.lo) + '" y2="' + y(b.hi) + '" stroke="#1f2328"/><line x1="' + (cx - 4) + '" x2="' + (cx + 4) + '" y1="' + y(b.lo) + '" y2="' + y(b.lo) + '" stroke="#1f2328"/><line x1="' + (cx - 4) + '" x2="' + (cx + 4) + '" y1="' + y(b.hi) + '" y2="' + y(b.hi) + '" stroke="#1f2328"/>';
        }
      });
      s += '<text x="' + (gx + (ts.length * bw) / 2) + '" y="' + (top + ph + 16) + '" font-size="11" text-anchor="middle">' + esc(m) + '</text>';
    });
    s += '</svg>';
    const note = fromReport ? 'Mean cosine (' + esc(split) + ' nodes) with the report’s cluster-bootstrap interval.' : 'Mean cosine of the filtered nodes, computed here; the report’s intervals do not apply to a ' + (S.question ? 'single question' : 'run without a report') + '.';
    body('s-bars').innerHTML = '<p class="note">' + note + '</p>' + teacherLegend(ts) + '<div class="scroll">' + s + '</div>';
  }

  const SPLITS = [['incorrect', '#cf222e'], ['correct', '#1a7f37'], ['mixed', '#8c959f']];

  function renderBoxes() {
    const rs = filtered(false).filter((r) => fin(r.cos));
    const comps = Object.fromEntries(((R && R.comparisons) || []).map((c) => [c.teacher + '|' + c.method, c]));
    const figs = [];
    for (const t of shownTeachers()) {
      for (const m of shownMethods()) {
        const mine = rs.filter((r) => r.teacher === t && r.method === m);
        const stats = SPLITS.map(([split]) => boxStats(mine.filter((r) => outcome(r.rc) === split).map((r) => r.cos)));
        figs.push('<figure class="box" data-teacher="' + esc(t) + '" data-method="' + esc(m) + '"><div class="fig-title">' + esc(t) + ' · ' + esc(m) + '</div>' + boxSvg(t, m, stats) + '<figcaption class="note">' + comparisonText(comps[t + '|' + m]) + '</figcaption></figure>');
      }
    }
    const note = 'Cosine of each analysed node by the outcome of the rollouts through it (mixed: the node lies on correct and incorrect rollouts; it enters neither side of the test). Boxes: quartiles, whiskers 1.5 IQR, diamond the mean. The test is the report’s one-sided Mann-Whitney U (H1: incorrect > correct) over all questions' + (S.question ? '; the boxes show the selected question only' : '') + '.';
    body('s-boxes').innerHTML = '<p class="note">' + note + '</p><div class="figs">' + figs.join('') + '</div>';
  }

  function boxSvg(t, m, stats) {
    const w = 190, h = 218, left = 34, top = 8, ph = 168;
    const y = scale(-1, 1, top + ph, top);
    let s = svgOpen(w, h, t + ' ' + m + ' box plot') + yAxis(y, [-1, -0.5, 0, 0.5, 1], left, w - 6, '');
    SPLITS.forEach(([split, color], k) => {
      const cx = left + 26 + k * 48;
      const b = stats[k];
      s += '<text x="' + cx + '" y="' + (top + ph + 14) + '" font-size="10" text-anchor="middle">' + split + '</text><text x="' + cx + '" y="' + (top + ph + 26) + '" font-size="9.5" text-anchor="middle" fill="#656d76">n=' + (b ? b.n : 0) + '</text>';
      if (!b) return;
      s += '<line x1="' + cx + '" x2="' + cx + '" y1="' + y(b.lo) + '" y2="' + y(b.hi) + '" stroke="' + color + '"/>';
      s += '<rect x="' + (cx - 13) + '" y="' + y(b.q3) + '" width="26" height="' + Math.max(1, y(b.q1) - y(b.q3)) + '" fill="' + color + '" fill-opacity="0.18" stroke="' + color + '"><title>' + esc(split + ': n=' + b.n + ', median ' + s3(b.med) + ', quartiles ' + s3(b.q1) + ' .. ' + s3(b.q3) + ', mean ' + s3(b.mean)) + '</title></rect>';
      s += '<line x1="' + (cx - 13) + '" x2="' + (cx + 13) + '" y1="' + y(b.med) + '" y2="' + y(b.med) + '" stroke="' + color + '" stroke-width="2"/>';
      s += '<path d="M' + cx + ' ' + (y(b.mean) - 4) + 'l4 4l-4 4l-4 -4z" fill="' + color + '"/>';
      for (const o of b.out.slice(0, 60)) s += '<circle cx="' + cx + '" cy="' + y(o) + '" r="1.8" fill="none" stroke="' + color + '"/>';
    });
    return s + '</svg>';
  }

  function comparisonText(c) {
    if (!c) return R ? 'no comparison in the report (a side without nodes)' : 'no report: no test';
    const sig = fin(c.mann_whitney_p) && c.mann_whitney_p < 0.05;
    return 'incorrect − correct: ' + s3(c.diff) + ' [' + s3(c.diff_ci_low) + ', ' + s3(c.diff_ci_high) + ']<br>Mann-Whitney U = ' + (fin(c.mann_whitney_u) ? +c.mann_whitney_u.toFixed(1) : '—') +
      ', p = <span class="mw-p"' + (sig ? ' style="font-weight:600;color:#1f2328"' : '') + '>' + fp(c.mann_whitney_p) + '</span> (n ' + c.nodes_incorrect + ' vs ' + c.nodes_correct + '); bootstrap p = ' + fp(c.bootstrap_p);
  }

  function renderDepth() {
    const rs = filtered(true).filter((r) => fin(r.cos) && fin(r.nd));
    const panels = shownMethods().map((m) => depthSvg(m, rs.filter((r) => r.method === m)));
    body('s-depth').innerHTML = '<p class="note">Each dot a node at its normalised depth (mean t/T over the rollouts through it); lines: mean cosine per tenth of depth. Spearman ρ with depth is in the correlation table.</p>' +
      teacherLegend(shownTeachers()) + '<div style="display:flex;flex-wrap:wrap;gap:8px">' + panels.join('') + '</div>';
  }

  function depthSvg(m, rs) {
    const w = 300, h = 220, left = 40, top = 22, pw = w - left - 10, ph = h - top - 34;
    const x = scale(0, 1, left, left + pw), y = scale(-1, 1, top + ph, top);
    let s = svgOpen(w, h, 'alignment against depth, ' + m) + '<text x="' + (left + pw / 2) + '" y="13" font-size="11.5" text-anchor="middle" font-weight="600">' + esc(m) + '</text>' + yAxis(y, [-1, -0.5, 0, 0.5, 1], left, left + pw, 'cosine');
    for (const t of [0, 0.25, 0.5, 0.75, 1]) s += '<text x="' + x(t) + '" y="' + (top + ph + 14) + '" font-size="10" text-anchor="middle">' + t + '</text>';
    s += '<text x="' + (left + pw / 2) + '" y="' + (h - 4) + '" font-size="10.5" text-anchor="middle">t / T</text>';
    const stride = Math.max(1, Math.ceil(rs.length / 1500)); // enough dots to see the cloud, few enough to draw fast
    for (let k = 0; k < rs.length; k += stride) {
      const r = rs[k];
      s += '<circle cx="' + x(r.nd).toFixed(1) + '" cy="' + y(r.cos).toFixed(1) + '" r="2" fill="' + teacherColor(r.teacher) + '" fill-opacity="0.35"/>';
    }
    for (const t of shownTeachers()) {
      const bins = Array.from({ length: 10 }, () => []);
      for (const r of rs) if (r.teacher === t) bins[Math.min(9, Math.floor(r.nd * 10))].push(r.cos);
      const pts = bins.map((b, k) => (b.length ? x((k + 0.5) / 10).toFixed(1) + ',' + y(mean(b)).toFixed(1) : null)).filter(Boolean);
      if (pts.length) s += '<polyline points="' + pts.join(' ') + '" fill="none" stroke="' + teacherColor(t) + '" stroke-width="2"/>';
    }
    return s + '</svg>';
  }

  const DIAG_NAMES = { kl_pq: 'KL(p‖q)', kl_qp: 'KL(q‖p)', js: 'JS', l2: 'L2(p, q)', cos_pq: 'cos(p, q)', student_entropy: 'H(p)', teacher_entropy: 'H(q)', normalized_depth: 't / T' };

  function renderCorrelations() {
    const cs = ((R && R.correlations) || []).filter((c) => okTM(c.teacher, c.method));
    if (!cs.length) {
      body('s-corr').innerHTML = '<p class="note">' + (R ? 'The report has no correlations for this selection.' : 'No report was given: no correlations.') + '</p>';
      return;
    }
    const diags = uniq(cs.map((c) => c.diagnostic));
    const rows = uniq(cs.map((c) => c.teacher + '|' + c.method));
    const at = Object.fromEntries(cs.map((c) => [c.teacher + '|' + c.method + '|' + c.diagnostic, c]));
    let s = '<table id="corr-table"><thead><tr><th class="l">teacher</th><th class="l">method</th>' + diags.map((d) => '<th>' + esc(DIAG_NAMES[d] || d) + '</th>').join('') + '</tr></thead><tbody>';
    for (const key of rows) {
      const [t, m] = key.split('|');
      s += '<tr><td class="l">' + esc(t) + '</td><td class="l">' + esc(m) + '</td>';
      for (const d of diags) {
        const c = at[key + '|' + d];
        s += c ? '<td class="cell" style="' + cellStyle(c.rho) + (fin(c.p_value) && c.p_value < 0.05 ? ';font-weight:600' : '') + '" title="ρ = ' + f3(c.rho) + ', p = ' + fp(c.p_value) + ', n = ' + c.n + '">' + s3(c.rho) + '<br><small>p ' + fp(c.p_value) + '</small></td>' : '<td class="cell">—</td>';
      }
      s += '</tr>';
    }
    body('s-corr').innerHTML = '<p class="note">Spearman ρ of the cosine with each diagnostic over the teacher’s non-skipped nodes (two-sided p; bold: p &lt; 0.05), from the report; over all questions and splits.</p>' + legendHtml() + '<div class="scroll">' + s + '</tbody></table></div>';
  }

  function renderQuestions() {
    const combos = shownTeachers().flatMap((t) => shownMethods().map((m) => [t, m]));
    const fromReport = R && R.per_question && R.per_question.length && !S.split;
    const pq = fromReport ? Object.fromEntries(R.per_question.map((q) => [q.tree_id + '|' + q.teacher + '|' + q.method, q])) : null;
    const byCell = new Map(); // tree|teacher|method -> cosines, in one pass over the records
    if (!fromReport) {
      for (const r of filtered(true)) {
        if (!fin(r.cos)) continue;
        const k = r.tree + '|' + r.teacher + '|' + r.method;
        if (!byCell.has(k)) byCell.set(k, []);
        byCell.get(k).push(r.cos);
      }
    }
    const cellOf = (tree, t, m) => {
      if (pq) { const q = pq[tree + '|' + t + '|' + m]; return q ? [q.mean_cosine, q.nodes] : [NaN, 0]; }
      const cs = byCell.get(tree + '|' + t + '|' + m) || [];
      return [mean(cs), cs.length];
    };
    const list = Array.from(trees.values()).filter((t) => !S.question || t.qid === S.question);
    const dup = (qid) => list.filter((t) => t.qid === qid).length > 1;
    let s = '<table id="question-table"><thead><tr><th class="l">question</th><th>correct</th>' + combos.map(([t, m]) => '<th>' + esc(t) + '<br><small>' + esc(m) + '</small></th>').join('') + '</tr></thead><tbody>';
    for (const tree of list) {
      const info = treeInfo[tree.id];
      const ros = Array.from(tree.rollouts.values());
      const acc = info ? info.correct + '/' + info.rollouts : ros.filter((v) => v === true).length + '/' + ros.length;
      s += '<tr class="click" data-tree="' + esc(tree.id) + '"><td class="l">' + esc(tree.qid) + (dup(tree.qid) ? ' <span class="pill">' + esc(tree.id.slice(0, 8)) + '</span>' : '') + '</td><td>' + acc + '</td>';
      for (const [t, m] of combos) {
        const [v, n] = cellOf(tree.id, t, m);
        s += '<td class="cell" style="' + cellStyle(v) + '" title="' + esc(t + ' · ' + m + ': ' + n + ' nodes') + '">' + (fin(v) ? s3(v) : '—') + '</td>';
      }
      s += '</tr>';
    }
    const note = (fromReport ? 'Mean cosine per question from the report.' : 'Mean cosine of the filtered nodes per question, computed here.') + ' Click a row to read its rollouts below.';
    body('s-questions').innerHTML = '<p class="note">' + note + '</p><div class="scroll scroll-y">' + s + '</tbody></table></div>';
    body('s-questions').querySelector('tbody').addEventListener('click', (e) => {
      const row = e.target.closest('tr[data-tree]');
      if (!row) return;
      S.tree = row.dataset.tree; S.rollout = null; S.node = null;
      renderRollouts();
      el('s-rollouts').scrollIntoView();
    });
  }

  // ------------------------------------------------------------------------------------ rollouts
  function treeChoices() { return Array.from(trees.values()).filter((t) => !S.question || t.qid === S.question); }

  function rolloutChoices(tree) {
    const all = Array.from(tree.rollouts.keys()).sort((a, b) => a - b);
    if (S.split !== 'correct' && S.split !== 'incorrect') return all;
    return all.filter((r) => tree.rollouts.get(r) === (S.split === 'correct') || tree.rollouts.get(r) === null);
  }

  const nodesThrough = (tree, r) => Array.from(tree.nodes.values()).filter((n) => n.rollouts.indexOf(r) >= 0).sort((a, b) => a.depth - b.depth);
  const recordAt = (node, t, m) => node.recs.find((r) => r.teacher === t && r.method === m);

  function renderRollouts() {
    const choices = treeChoices();
    if (!choices.length) { body('s-rollouts').innerHTML = '<p class="note">No records for this selection.</p>'; return; }
    if (!S.tree || !choices.some((t) => t.id === S.tree)) S.tree = choices[0].id;
    const tree = trees.get(S.tree);
    const ros = rolloutChoices(tree);
    if (S.rollout === null || ros.indexOf(S.rollout) < 0) S.rollout = ros.length ? ros[0] : null;
    const opt = (v, label, cur) => '<option value="' + esc(v) + '"' + (String(v) === String(cur) ? ' selected' : '') + '>' + esc(label) + '</option>';
    let s = '<div class="controls legend"><label>Tree<select id="r-tree">' + choices.map((t) => opt(t.id, t.qid + ' · ' + t.id.slice(0, 8), S.tree)).join('') + '</select></label>' +
      '<label>Colour by teacher<select id="r-teacher">' + teachers.map((t) => opt(t, t, S.vt)).join('') + '</select></label>' +
      '<label>method<select id="r-method">' + methods.map((m) => opt(m, m, S.vm)).join('') + '</select></label></div>' + legendHtml();
    s += '<div class="rollouts" id="rollout-list">' + ros.map((r) => {
      const o = tree.rollouts.get(r);
      const mark = o === true ? '<span class="ok">✓</span>' : o === false ? '<span class="bad">✗</span>' : '?';
      return '<button type="button" data-rollout="' + r + '"' + (r === S.rollout ? ' class="on"' : '') + ' title="' + (o === true ? 'correct' : o === false ? 'incorrect' : 'outcome not in the records') + ', ' + nodesThrough(tree, r).length + ' analysed nodes">rollout ' + r + ' ' + mark + '</button>';
    }).join('') + '</div><div id="tokens"></div><div id="node-panel"></div>';
    body('s-rollouts').innerHTML = s;
    el('r-tree').addEventListener('change', (e) => { S.tree = e.target.value; S.rollout = null; S.node = null; renderRollouts(); });
    el('r-teacher').addEventListener('change', (e) => { S.vt = e.target.value; renderTokens(); renderNode(); });
    el('r-method').addEventListener('change', (e) => { S.vm = e.target.value; renderTokens(); renderNode(); });
    el('rollout-list').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-rollout]');
      if (!b) return;
      S.rollout = +b.dataset.rollout; S.node = null;
      renderRollouts();
    });
    el('tokens').addEventListener('click', (e) => {
      const chip = e.target.closest('.chip');
      if (!chip) return;
      S.node = chip.dataset.key;
      renderTokens(); renderNode();
    });
    renderTokens();
    renderNode();
  }

  /* The rollout's completion up to its deepest analysed node when the records carry prefix ids
     (analysed positions as chips), else only the chips in order of depth. */
  function renderTokens() {
    const tree = trees.get(S.tree);
    const box = el('tokens');
    if (S.rollout === null) { box.innerHTML = '<p class="note">No rollout in this selection.</p>'; return; }
    const nodes = nodesThrough(tree, S.rollout);
    if (!S.node || !nodes.some((n) => n.key === S.node)) {
      const first = nodes.find((n) => { const r = recordAt(n, S.vt, S.vm); return r && fin(r.cos); }) || nodes[0];
      S.node = first ? first.key : null;
    }
    const deepest = nodes[nodes.length - 1];
    const withPrefix = nodes.filter((n) => Array.isArray(n.prefix));
    const full = deepest && withPrefix.length && withPrefix[withPrefix.length - 1] === deepest;
    const at = new Map(nodes.map((n) => [n.depth, n]));
    const chip = (n, text) => {
      const r = recordAt(n, S.vt, S.vm);
      const cls = 'chip' + (r && !fin(r.cos) ? ' skipped' : '') + (n.key === S.node ? ' sel' : '');
      const style = r ? (fin(r.cos) ? cellStyle(r.cos) : '') : 'background:#fff;border-style:dashed';
      const tip = 't = ' + n.depth + ': ' + (r ? (fin(r.cos) ? 'cosine ' + s3(r.cos) : 'skipped: ' + r.skip) : 'no record for ' + S.vt + ' · ' + S.vm) + (n.rep !== S.rollout ? ' (token of rollout ' + n.rep + ', the node’s representative)' : '');
      return '<button type="button" class="' + cls + '" style="' + style + '" data-key="' + esc(n.key) + '" data-depth="' + n.depth + '" title="' + esc(tip) + '">' + esc(visible(text)) + (full ? '' : '<sub>' + n.depth + '</sub>') + '</button>';
    };
    const T = nodes.find((n) => n.rep === S.rollout);
    let s;
    let note;
    if (full) {
      const ids = deepest.prefix.concat([deepest.sampled]);
      s = ids.map((id, p) => (at.has(p) ? chip(at.get(p), tokenText(id)) : '<span class="tok">' + esc(visible(tokenText(id))) + '</span>')).join('');
      s += '<span class="tok"> …</span>';
      note = 'The completion up to its deepest analysed node; analysed positions are coloured by the cosine of ' + esc(S.vt) + ' · ' + esc(S.vm) + ' (click one for its candidates). The rest of the completion' + (T ? ' (T = ' + T.T + ' tokens)' : '') + ' is not in the records.';
    } else {
      s = nodes.map((n) => chip(n, tokenText(n.sampled))).join('');
      note = 'These records carry no prefix token ids, so the completion’s text is not available: the chips are the analysed positions in order of depth (t as subscript), each with the token its node’s representative rollout sampled. Records with prefixes come from analysis.include_prefix_ids = true or gradalign report --server.';
    }
    const unknown = (full ? deepest.prefix : []).some((id) => !vocab.has(id));
    box.innerHTML = '<p class="note">' + note + (unknown ? ' Tokens shown as #id are no node’s candidate, and the records hold only the candidates’ texts (write_html’s token_texts names the others).' : '') + '</p><div class="tokens' + (full ? '' : ' chips-only') + '">' + (s || '<span class="note">no analysed node on this rollout</span>') + '</div>';
  }

  function renderNode() {
    const panel = el('node-panel');
    const tree = trees.get(S.tree);
    const node = S.node && tree.nodes.get(S.node);
    if (!node) { panel.innerHTML = '<p class="note">Select a coloured token to see its node.</p>'; return; }
    panel.dataset.key = node.key;
    panel.dataset.depth = node.depth;
    const mine = node.recs.filter((r) => r.teacher === S.vt);
    const sel = recordAt(node, S.vt, S.vm);
    const full = expand((sel || mine[0] || node.recs[0]).i);
    const okCount = full.rollouts_correct;
    let s = '<h3>Node at t = ' + node.depth + ' of T = ' + node.T + ' (t/T ' + f3(node.nd) + ') · ' + esc(tree.qid) + ' · rollouts ' + node.rollouts.join(', ') +
      (okCount === null || okCount === undefined ? '' : ' (' + okCount + ' correct)') + ' · ' + outcome(node.rc) + '</h3>';
    if (Array.isArray(full.prefix_token_ids)) {
      const tail = full.prefix_token_ids.slice(-40).map((id) => visible(tokenText(id))).join('·');
      s += '<div class="prefix">prefix: ' + (full.prefix_token_ids.length > 40 ? '… ' : '') + esc(tail) + ' ⟨' + esc(visible(tokenText(full.sampled_token_id))) + '⟩</div>';
    }
    s += '<div class="kv"><span>sampled token <b>' + esc(visible(tokenText(full.sampled_token_id))) + '</b> (id ' + full.sampled_token_id + ', rollout ' + full.rollout_index + ')</span><span>‖g*‖ <b>' + f3(full.ideal_norm) + '</b></span>' +
      '<span class="sources">' + esc(S.vt) + ': demonstration <b>' + esc(full.demo_source === null || full.demo_source === undefined ? 'none' : full.demo_source) + '</b>' +
      (full.wrong_source ? ', wrong demonstration <b>' + esc(full.wrong_source) + '</b>' : '') + '</span><span>teacher advantage <b>' + s3(full.teacher_advantage) + '</b></span></div>';
    s += cosineGrid(node);
    s += sel ? candidatesTable(expand(sel.i)) : '<p class="note">No record of ' + esc(S.vt) + ' · ' + esc(S.vm) + ' at this node.</p>';
    if (full.diagnostics) {
      s += '<div class="kv">' + Object.keys(full.diagnostics).map((k) => '<span>' + esc(DIAG_NAMES[k] || k) + ' <b>' + f3(full.diagnostics[k]) + '</b></span>').join('') + '</div>';
    }
    panel.innerHTML = s;
    panel.querySelector('.cosgrid').addEventListener('click', (e) => {
      const cell = e.target.closest('td[data-teacher]');
      if (!cell) return;
      S.vt = cell.dataset.teacher; S.vm = cell.dataset.method;
      el('r-teacher').value = S.vt; el('r-method').value = S.vm;
      renderTokens(); renderNode();
    });
  }

  function cosineGrid(node) {
    let s = '<table class="cosgrid"><thead><tr><th class="l">cosine at this node</th>' + methods.map((m) => '<th>' + esc(m) + '</th>').join('') + '</tr></thead><tbody>';
    for (const t of teachers) {
      s += '<tr><td class="l">' + esc(t) + '</td>';
      for (const m of methods) {
        const r = recordAt(node, t, m);
        const on = t === S.vt && m === S.vm ? ' sel' : '';
        if (!r) s += '<td class="cell' + on + '">—</td>';
        else if (fin(r.cos)) s += '<td class="cell' + on + '" data-teacher="' + esc(t) + '" data-method="' + esc(m) + '" style="' + cellStyle(r.cos) + '">' + s3(r.cos) + '</td>';
        else s += '<td class="cell chip skipped' + on + '" data-teacher="' + esc(t) + '" data-method="' + esc(m) + '" title="' + esc(r.skip) + '"><small>' + esc(r.skip) + '</small></td>';
      }
      s += '</tr>';
    }
    return s + '</tbody></table><p class="note">Click a cell to see that teacher and method below and on the tokens.</p>';
  }

  function candidatesTable(r) {
    const inS = r.candidates.filter((c) => c.in_support);
    const gAt = new Map(inS.map((c, k) => [c, k]));
    const flags = (c) => [c.sampled ? 'sampled' : '', c.forced ? 'forced' : '', c.in_support ? 'in S(u)' : ''].filter(Boolean).join(', ');
    let s = '<h3 style="margin-top:10px">Candidates · ' + esc(r.teacher) + ' · ' + esc(r.method) + ' · <span class="cosine">' + (fin(r.cosine) ? 'cos(g*, d) = ' + s3(r.cosine) : 'skipped: ' + esc(r.skip_reason)) + '</span> · ‖d‖ ' + f3(r.distill_norm) + '</h3>';
    s += '<div class="scroll"><table class="cands"><thead><tr><th class="l">token</th><th>id</th><th>p</th><th>q</th><th>p~</th><th>q~</th><th>visits</th><th>successes</th><th>v (estimate)</th><th>interval</th><th>g* (ideal)</th><th>d (distillation)</th><th class="l">flags</th></tr></thead><tbody>';
    for (const c of r.candidates) {
      const k = gAt.get(c);
      const g = k === undefined ? null : r.ideal[k];
      const d = k === undefined ? null : r.distill[k];
      s += '<tr><td class="l tokcell">' + esc(visible(c.token_text)) + '</td><td>' + c.token_id + '</td><td>' + f3(c.p) + '</td><td>' + f3(c.q) + '</td><td>' + f3(c.p_renorm) + '</td><td>' + f3(c.q_renorm) + '</td><td>' + c.visits + '</td><td>' + c.successes + '</td>' +
        '<td>' + f3(c.estimate) + '</td><td>[' + f3(c.ci_low) + ', ' + f3(c.ci_high) + ']</td><td>' + (g === null || g === undefined ? '—' : s3(g)) + '</td><td>' + (d === null || d === undefined ? '—' : s3(d)) + '</td><td class="l">' + flags(c) + '</td></tr>';
    }
    return s + '</tbody></table></div><p class="note">p, q: student and teacher probabilities (full vocabulary); p~, q~: renormalised over S(u); v: Monte Carlo success rate of the continuations through the token, with its interval; g*, d: the ideal and distillation vectors over S(u).</p>';
  }

  function renderRun() {
    const parts = [];
    if (blob.tasks) parts.push('<table><thead><tr><th class="l">task</th><th>questions</th><th>screened out</th><th>kept</th><th>base accuracy</th></tr></thead><tbody>' + blob.tasks.map((t) => '<tr><td class="l">' + esc(t.name) + '</td><td>' + t.questions + '</td><td>' + t.screened_out + '</td><td>' + t.kept + '</td><td>' + f3(t.base_accuracy) + '</td></tr>').join('') + '</tbody></table>');
    if (blob.contexts && blob.contexts.length) parts.push('<p class="note">In-context accuracy of the student with each context (Wilson interval):</p><table><thead><tr><th class="l">context</th><th>questions</th><th>samples</th><th>accuracy</th><th>interval</th></tr></thead><tbody>' + blob.contexts.map((c) => '<tr><td class="l">' + esc(c.context) + '</td><td>' + c.questions + '</td><td>' + c.samples + '</td><td>' + f3(c.accuracy) + '</td><td>[' + f3(c.ci_low) + ', ' + f3(c.ci_high) + ']</td></tr>').join('') + '</tbody></table>');
    if (blob.receipt) parts.push('<details><summary>Receipt: models, hashes, settings</summary><pre>' + esc(JSON.stringify(blob.receipt, null, 2)) + '</pre></details>');
    body('s-run').innerHTML = parts.length ? parts.join('') : '<p class="note">No receipt was given.</p>';
  }

  const timings = {}; // ms per section, last render (the self-test reports them)
  function timed(name, fn) {
    const t0 = performance.now();
    fn();
    timings[name] = +(performance.now() - t0).toFixed(1);
  }

  function renderAll() {
    timed('ranking', renderRanking);
    timed('bars', renderBars);
    timed('depth', renderDepth);
    timed('boxes', renderBoxes);
    timed('correlations', renderCorrelations);
    timed('questions', renderQuestions);
    timed('rollouts', renderRollouts);
    const n = filtered(true).length;
    el('f-count').textContent = n + ' of ' + recs.length + ' records';
  }

  // ------------------------------------------------------------------------------------ self-test
  /* With #selftest: click the last chip of the shown rollout, then write what the page shows (counts,
     the node panel, errors) into #selftest-result, for a headless browser's --dump-dom to read. */
  function selftest() {
    const out = { tree: S.tree, rollout: S.rollout, teacher: S.vt, method: S.vm };
    try {
      const count = (q) => document.querySelectorAll(q).length;
      out.ranking_rows = count('#ranking-table tbody tr');
      out.options = {};
      for (const k of ['teacher', 'method', 'question', 'split']) out.options[k] = Array.from(el('f-' + k).options).map((o) => o.value).filter(Boolean);
      out.boxplots = count('#s-boxes figure');
      out.mann_whitney = Array.from(document.querySelectorAll('#s-boxes .mw-p')).map((e) => e.textContent);
      out.depth_panels = count('#s-depth svg');
      out.correlation_rows = count('#corr-table tbody tr');
      out.question_rows = count('#question-table tbody tr');
      out.rollout_buttons = count('#rollout-list button');
      const chips = Array.from(document.querySelectorAll('#tokens .chip'));
      out.chips = chips.length;
      out.chip_depths = chips.map((c) => +c.dataset.depth);
      out.full_text = !document.querySelector('#tokens .chips-only');
      out.token_line = (document.querySelector('#tokens .tokens') || {}).textContent;
      if (chips.length) {
        const t0 = performance.now();
        chips[chips.length - 1].dispatchEvent(new MouseEvent('click', { bubbles: true }));
        out.click_ms = +(performance.now() - t0).toFixed(1);
        const panel = el('node-panel');
        out.panel = {
          key: panel.dataset.key,
          depth: +panel.dataset.depth,
          selected_chip: (document.querySelector('#tokens .chip.sel') || {}).dataset.depth,
          candidates: Array.from(panel.querySelectorAll('table.cands tbody tr')).map((tr) => Array.from(tr.children).map((td) => td.textContent)),
          cosine: (panel.querySelector('.cosine') || {}).textContent,
          sources: (panel.querySelector('.sources') || {}).textContent,
          grid_cells: panel.querySelectorAll('.cosgrid td.cell').length,
        };
      }
      out.first_timings = Object.assign({}, timings);
      const tsel = el('f-teacher');
      tsel.value = teachers[0];
      tsel.dispatchEvent(new Event('change'));
      out.ranking_rows_one_teacher = count('#ranking-table tbody tr');
      tsel.value = '';
      tsel.dispatchEvent(new Event('change'));
      // every filter at once: the last question's incorrect nodes (the sections redraw from the records)
      const pick = (id, v) => { el(id).value = v; el(id).dispatchEvent(new Event('change')); };
      pick('f-question', questions[questions.length - 1]);
      pick('f-split', 'incorrect');
      pick('f-method', methods[methods.length - 1]);
      out.filtered = { question_rows: count('#question-table tbody tr'), boxplots: count('#s-boxes figure'), records: el('f-count').textContent };
      ['f-question', 'f-split', 'f-method'].forEach((id) => pick(id, ''));
    } catch (e) {
      out.exception = String((e && e.stack) || e);
    }
    out.errors = window.__gradalignErrors ? window.__gradalignErrors.slice() : ['the error prelude did not run'];
    out.render_ms = +document.body.dataset.renderMs;
    out.timings = Object.assign({ decode: DECODE_MS, script_start: SCRIPT_START }, timings);
    el('selftest-result').textContent = JSON.stringify(out);
  }

  layout();
  renderSubtitle();
  renderFilters();
  renderAll();
  renderRun();
  document.body.dataset.renderMs = performance.now().toFixed(1);
  if (SELFTEST) setTimeout(selftest, 0);
})();
