// Checks a checkpoint receipt in the browser with WebCrypto (crunch_assets/receipts.py builds it;
// verify_receipt.py is the same check in Python). Nothing is taken on trust from the page: every
// leaf is recomputed from its fields in RFC 8785 canonical JSON, each path to the period's Merkle
// root, the entries' hash, the chained root (commitment scheme 3) and the model's reward.
// RFC 8785 numbers are ECMAScript's: JSON.stringify of a finite double; keys sorted by UTF-16 code
// units (Array.prototype.sort's default order); strings escaped as JSON.stringify escapes them.
"use strict";
(function () {
  const SCHEME = 3;
  const GENESIS = "0".repeat(64);
  const encoder = new TextEncoder();

  function canonical(value) {
    if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
    if (typeof value === "number") return Number.isFinite(value) ? JSON.stringify(value) : "null";
    if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
    const keys = Object.keys(value).sort();
    return "{" + keys.map((key) => JSON.stringify(key) + ":" + canonical(value[key])).join(",") + "}";
  }

  function hexToBytes(hex) {
    if (typeof hex !== "string" || !/^([0-9a-f]{2})*$/.test(hex)) throw new Error("not a hex string");
    const bytes = new Uint8Array(hex.length / 2);
    for (let i = 0; i < bytes.length; i += 1) bytes[i] = parseInt(hex.substr(2 * i, 2), 16);
    return bytes;
  }

  function concat(parts) {
    const out = new Uint8Array(parts.reduce((size, part) => size + part.length, 0));
    let offset = 0;
    for (const part of parts) { out.set(part, offset); offset += part.length; }
    return out;
  }

  async function sha256(bytes) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  const sha256Json = (value) => sha256(encoder.encode(canonical(value)));

  function leafHash(fields) {
    const leaf = {model_id: fields.model_id, cycle_at: fields.cycle_at, scope_key: fields.scope_key,
      output_sha256: fields.output_sha256, truth_sha256: fields.truth_sha256, value: fields.value};
    return sha256(concat([Uint8Array.of(0), encoder.encode(canonical(leaf))]));
  }

  const node = (left, right) => sha256(concat([Uint8Array.of(1), hexToBytes(left), hexToBytes(right)]));

  async function merkleRoot(hashes) {
    if (hashes.length === 0) return sha256(new Uint8Array(0));
    let level = hashes.slice();
    while (level.length > 1) {
      const next = [];
      for (let i = 0; i < level.length; i += 2) next.push(i + 1 < level.length ? await node(level[i], level[i + 1]) : level[i]);
      level = next;
    }
    return level[0];
  }

  async function rootFromPath(leaf, proof) {
    let current = leaf;
    for (const step of proof) current = step.side === "left" ? await node(step.hash, current) : await node(current, step.hash);
    return current;
  }

  function chainedRoot(previous, root, entriesHash) {
    return sha256(concat([Uint8Array.of(SCHEME), hexToBytes(previous || GENESIS), hexToBytes(root), hexToBytes(entriesHash)]));
  }

  // {ok: true} or {ok: false, field}: the first field that does not verify (as verify_receipt.py names it).
  async function verifyReceipt(receipt) {
    try {
      return await check(receipt);
    } catch (error) {
      return {ok: false, field: "malformed receipt: " + error.message};
    }
  }

  async function check(receipt) {
    const fail = (field) => ({ok: false, field});
    if (receipt.receipt_version !== 1) return fail("receipt_version");
    if (receipt.commitment_scheme !== SCHEME) return fail("commitment_scheme");
    for (const [i, leaf] of receipt.leaves.entries()) {
      const where = "leaves[" + i + "]";
      if (leaf.model_id !== receipt.model_id) return fail(where + ".model_id");
      for (const part of ["output", "truth"]) {
        if (await sha256Json(leaf[part]) !== leaf[part + "_sha256"]) return fail(where + "." + part);
      }
      if (await leafHash(leaf) !== leaf.leaf_hash) return fail(where + ".leaf_hash");
      if (await rootFromPath(leaf.leaf_hash, leaf.proof) !== receipt.merkle_root) return fail(where + ".proof");
    }
    if (await sha256Json(receipt.entries) !== receipt.entries_sha256) return fail("entries");
    if (await chainedRoot(receipt.previous_chained_root, receipt.merkle_root, receipt.entries_sha256) !== receipt.chained_root) {
      return fail("chained_root");
    }
    const rows = (receipt.entries.ranking || []).filter((row) => row.model_id === receipt.model_id);
    if (rows.length !== 1) return fail("reward");
    for (const [key, value] of Object.entries(receipt.reward)) {
      if (canonical(value) !== canonical(rows[0][key] === undefined ? null : rows[0][key])) return fail("reward." + key);
    }
    // every score of the model in the period is a leaf: none left out
    const counts = rows[0].breakdown;
    const scores = ["scored", "failed", "absent", "rejected"].reduce((sum, key) => sum + (counts[key] || 0), 0);
    if (receipt.leaves.length !== scores) return fail("leaves");
    if ("rules_fingerprint" in receipt.entries && receipt.rules_fingerprint !== receipt.entries.rules_fingerprint) {
      return fail("rules_fingerprint");
    }
    return {ok: true};
  }

  function show(widget, state, text) {
    const status = widget.querySelector(".receipt-status");
    status.dataset.state = state;
    status.textContent = text;
  }

  async function verifyWidget(widget) {
    if (!(window.crypto && crypto.subtle)) {
      show(widget, "unavailable", "cannot be checked here: this browser offers WebCrypto only on a secure (https) page");
      return;
    }
    let receipt;
    try {
      const response = await fetch(widget.dataset.receiptUrl, {headers: {Accept: "application/json"}});
      if (!response.ok) throw new Error("the API answered " + response.status);
      receipt = await response.json();
    } catch (error) {
      show(widget, "error", "could not be fetched (" + error.message + ")");
      return;
    }
    const verdict = await verifyReceipt(receipt);
    widget.dataset.leaves = String(receipt.leaves ? receipt.leaves.length : 0);
    if (verdict.ok) show(widget, "verified", "verified");
    else show(widget, "failed", "does not verify: " + verdict.field);
  }

  window.crunchReceipt = {canonical, sha256, leafHash, merkleRoot, rootFromPath, chainedRoot, verifyReceipt};
  const start = () => document.querySelectorAll("[data-receipt-url]").forEach(verifyWidget);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
