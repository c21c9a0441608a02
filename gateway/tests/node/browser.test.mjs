// The built-in pages in a real browser (Debian's Chromium driven by playwright-core): the demo
// chat on two nodes of a cluster, one pane on Socket.IO and one on Phoenix, talking to each
// other; the console showing both nodes and users and sending a message to one of them; a
// wrong API key refused. Screenshots go to target/screenshots (docs/ holds the committed ones).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { REPO_ROOT, SECRET, startCluster, startNode, startRedis, token } from './harness.mjs';
import { freshDatabase } from './storage-helpers.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SWITCHBOARD_SCREENSHOTS || join(REPO_ROOT, 'target', 'screenshots');
const API_KEY = 'console-test-key';
const DESKTOP = { width: 1280, height: 800 };
const MOBILE = { width: 360, height: 740 };
const WAIT = 10_000;

async function launch(t) {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (scripts/test installs Debian's chromium)`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  t.after(() => browser.close());
  return browser;
}

/** A page in its own context (own sessionStorage) that records every console error. */
async function open(browser, url, viewport, errors) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.on('console', (msg) => msg.type() === 'error' && errors.push(`${url}: ${msg.text()}`));
  page.on('pageerror', (e) => errors.push(`${url}: ${e.message}`));
  await page.goto(url);
  return page;
}

async function joinDemo(page, tok) {
  if (tok) await page.fill('#token', tok);
  await page.click('#setup-form button[type=submit]');
  await page.waitForSelector('#chat:not(.hidden)', { timeout: WAIT });
}

const text = (page, selector) => page.locator(selector).first().textContent({ timeout: WAIT });

async function shot(page, name) {
  await mkdir(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

test('demo on two nodes and both protocols, console on the cluster', { timeout: 120_000 }, async (t) => {
  const redis = await startRedis({ t });
  // The nodes of a cluster share one database (a receipt on B looks up a message sent on A).
  const db = await freshDatabase(t);
  const { nodes } = await startCluster(2, {
    redis,
    t,
    // Debug logs: even there no key or token may appear.
    args: ['--jwt-secret', SECRET, '--api-key', API_KEY, '--access', 'open', '--database-url', db.url, '--log', 'debug'],
  });
  const [a, b] = nodes;
  const browser = await launch(t);
  const errors = [];
  const room = `lobby-${Date.now()}`;

  const tokens = { alice: token({ sub: 'alice' }), bob: token({ sub: 'bob' }) };
  const alice = await open(browser, `${a.url}/demo?user=alice&conversation=${room}&protocol=socketio`, DESKTOP, errors);
  await joinDemo(alice, tokens.alice);
  await alice.waitForFunction(() => document.querySelector('#connection').textContent.includes('Socket.IO'), null, { timeout: WAIT });

  const bob = await open(browser, `${b.url}/demo?user=bob&conversation=${room}&protocol=phoenix`, MOBILE, errors);
  await joinDemo(bob, tokens.bob);
  await bob.waitForFunction(() => document.querySelector('#connection').textContent.includes('Phoenix'), null, { timeout: WAIT });

  // Presence: each sees the other in the conversation, across nodes and protocols.
  await alice.waitForFunction(() => document.querySelector('#online').textContent.includes('bob'), null, { timeout: WAIT });
  await bob.waitForFunction(() => document.querySelector('#online').textContent.includes('alice'), null, { timeout: WAIT });

  // Typing, then the message, then bob's read receipt back on alice's page.
  await alice.locator('#text').pressSequentially('hello bob', { delay: 20 });
  await bob.waitForFunction(() => document.querySelector('#typing').textContent.includes('alice is typing'), null, { timeout: WAIT });
  await alice.press('#text', 'Enter');
  const bobsCopy = bob.locator('.msg', { hasText: 'hello bob' });
  await bobsCopy.waitFor({ timeout: WAIT });
  assert.equal(await bobsCopy.locator('.who').textContent(), 'alice');
  await bob.waitForFunction(() => document.querySelector('#typing').textContent === '', null, { timeout: WAIT });
  const alicesCopy = alice.locator('.msg.mine', { hasText: 'hello bob' });
  await alice.waitForFunction(() => document.querySelector('.msg.mine .receipt')?.textContent === 'read by bob', null, { timeout: WAIT });

  // A reaction from the Phoenix pane reaches the Socket.IO pane.
  await bobsCopy.locator('.reactions button').click();
  await alice.waitForFunction(() => document.querySelector('.msg.mine .reaction-list')?.textContent === '👍 1', null, { timeout: WAIT });

  // And the other way: bob answers, alice sees it.
  await bob.fill('#text', 'hi alice');
  await bob.press('#text', 'Enter');
  await alice.locator('.msg', { hasText: 'hi alice' }).waitFor({ timeout: WAIT });
  assert.equal(await alicesCopy.count(), 1, 'the sender sees her message once (ack and echo merged)');

  // The console on node B, signed in with the wrong key first.
  const consolePage = await open(browser, `${b.url}/console`, DESKTOP, errors);
  await consolePage.waitForSelector('#signin:not(.hidden)', { timeout: WAIT });
  await consolePage.fill('#credential', 'not-the-key');
  await consolePage.click('#signin-form button[type=submit]');
  await consolePage.waitForFunction(() => document.querySelector('#signin-error').textContent.startsWith('Refused'), null, { timeout: WAIT });
  assert.ok(await consolePage.locator('#signin-error').isVisible(), 'the refusal is visible');
  assert.ok(await consolePage.locator('#dashboard').isHidden(), 'nothing of the cluster is shown');
  const body = await consolePage.content();
  assert.ok(!body.includes(API_KEY), 'the page holds no secret');

  await consolePage.fill('#credential', API_KEY);
  await consolePage.click('#signin-form button[type=submit]');
  await consolePage.waitForSelector('#dashboard:not(.hidden)', { timeout: WAIT });
  // Both nodes, healthy, whichever node serves the page; both users online; the conversation.
  for (const id of ['A', 'B']) {
    await consolePage.waitForSelector(`#nodes tr[data-node="${id}"] .pill.good`, { timeout: WAIT });
  }
  for (const user of ['alice', 'bob']) await consolePage.waitForSelector(`#users tr[data-user="${user}"]`, { timeout: WAIT });
  const members = await text(consolePage, `#rooms tr[data-room="${room}"] td:nth-child(2)`);
  assert.equal(members, 'alice, bob');
  // Rates come from two reports of a node: a broadcast from the console writes one frame to
  // each page, which shows as frames out per second on the next report.
  await consolePage.fill('#act-broadcast input[name=message]', 'hello everyone');
  await consolePage.click('#act-broadcast button');
  await alice.locator('.msg.notice', { hasText: 'hello everyone' }).waitFor({ timeout: WAIT });
  await bob.locator('.msg.notice', { hasText: 'hello everyone' }).waitFor({ timeout: WAIT });
  await consolePage.waitForFunction(() => {
    const shown = document.querySelector('#rates [data-rate="framesOut"] b')?.textContent;
    return shown && shown !== '–' && Number(shown) > 0;
  }, null, { timeout: WAIT });

  // "Message a user" from the console arrives in bob's page (Phoenix, node B).
  await consolePage.fill('#act-message input[name=user]', 'bob');
  await consolePage.fill('#act-message input[name=message]', 'hello from the console');
  await consolePage.click('#act-message button');
  await consolePage.waitForFunction(() => document.querySelector('#action-result').textContent === 'Sent to bob.', null, { timeout: WAIT });
  await bob.locator('.msg.notice', { hasText: 'hello from the console' }).waitFor({ timeout: WAIT });

  const consoleMobile = await open(browser, `${a.url}/console`, MOBILE, errors);
  await consoleMobile.fill('#credential', API_KEY);
  await consoleMobile.click('#signin-form button[type=submit]');
  await consoleMobile.waitForSelector('#nodes tr[data-node="B"] .pill.good', { timeout: WAIT });
  const overflow = await consoleMobile.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the console fits a 360 px screen (${overflow} px too wide)`);

  await shot(alice, 'demo-desktop');
  await shot(bob, 'demo-mobile');
  await shot(consolePage, 'console-desktop');
  await shot(consoleMobile, 'console-mobile');
  assert.deepEqual(errors, [], 'no page logged an error');
  for (const node of nodes) {
    const logs = node.output();
    assert.ok(logs.includes('DEBUG'), 'the nodes logged at debug level');
    for (const secret of [API_KEY, tokens.alice, tokens.bob]) {
      assert.ok(!logs.includes(secret), `node ${node.nodeId} logged a secret`);
    }
  }
});

test('--dev: the demo gets its token from the node, the console needs no sign-in on loopback', { timeout: 60_000 }, async (t) => {
  const node = await startNode({ args: ['--dev'] });
  t.after(() => node.stop());
  const browser = await launch(t);
  const errors = [];
  const page = await open(browser, `${node.url}/demo?user=carol&conversation=dev-room&join=1`, DESKTOP, errors);
  await page.waitForFunction(() => document.querySelector('#connection').textContent.includes('connected over Socket.IO'), null, { timeout: WAIT });
  await page.fill('#text', 'first message');
  await page.press('#text', 'Enter');
  await page.locator('.msg.mine', { hasText: 'first message' }).waitFor({ timeout: WAIT });

  const consolePage = await open(browser, `${node.url}/console`, DESKTOP, errors);
  await consolePage.waitForSelector('#users tr[data-user="carol"]', { timeout: WAIT });
  assert.ok(await consolePage.locator('#signin').isHidden());
  assert.deepEqual(errors, []);
});

test('--console=false serves neither page; the vendored clients are the lockfile versions', async (t) => {
  const node = await startNode({ args: ['--jwt-secret', SECRET, '--console=false'] });
  t.after(() => node.stop());
  for (const path of ['/console', '/demo', '/assets/console.js']) {
    assert.equal((await fetch(`${node.url}${path}`)).status, 404, path);
  }
  const vendored = [
    ['socket.io.min.js', 'node_modules/socket.io-client/dist/socket.io.min.js'],
    ['phoenix.min.js', 'node_modules/phoenix/priv/static/phoenix.min.js'],
  ];
  for (const [file, installed] of vendored) {
    const ours = await readFile(join(REPO_ROOT, 'gateway', 'web', 'vendor', file));
    const locked = await readFile(new URL(installed, import.meta.url));
    assert.ok(ours.equals(locked), `gateway/web/vendor/${file} differs from the lockfile's ${installed}`);
  }
});
