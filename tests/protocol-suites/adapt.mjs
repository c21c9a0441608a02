// Adapts the official socketio/socket.io-protocol test suite (test-suite/test-suite.js, read
// from a checkout you provide: it is not vendored here) to a Switchboard node, writing
// test-suite.switchboard.js beside it. Each adaptation is one the suite's own test server
// forces, named below; nothing else of the suite changes.
//
// Usage: node adapt.mjs SUITE_DIR   (env SUITE_URL, SUITE_TOKEN)

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
const source = readFileSync(join(dir, 'test-suite.js'), 'utf8');

const adaptations = [
  // 1. The node's URL instead of localhost:3000.
  ['url', /"http:\/\/localhost:3000"/g, 'process.env.SUITE_URL'],
  // 2. A JWT of the node's secret instead of the test server's free-form tokens.
  ['token', /\{"token":"(123|abc)"\}/g, '{"token":"${process.env.SUITE_TOKEN}"}'],
  // The strings holding a token become template literals for (2).
  ['token quotes', /'(40(?:\/custom,)?\{"token":"\$\{process\.env\.SUITE_TOKEN\}"\})'/g, '`$1`'],
  // 3. The test server echoes the CONNECT payload back as an "auth" event; Switchboard has no
  //    such event: the waits for it and their checks go.
  ['auth wait', /^\s*await waitFor\(socket, "message"\); \/\/ "?auth"? packet\n/gm, ''],
  ['auth check', /^\s*const authPacket = await waitFor\(socket, "message"\);\n\s*expect\(authPacket\.data\)\.to\.eql\([^\n]*\);\n/gm, ''],
  // 4. The test server echoes events ("message-back") and acks their arguments, binary
  //    attachments included; Switchboard has no echo event, answers an unknown event with its
  //    `error` event or an error ack, and refuses binary attachments (docs/protocol.md). The
  //    expected answers become Switchboard's: the packets are still read, in their namespace,
  //    with their ack id, attachments skipped.
  ['echo event', /'42\["message-back",(?:"message to main namespace"|1,"2",\{"3":\[true\]\})\]'/g,
    `'42["error",{"code":"bad_request","message":"unknown event \\'message\\'","event":"message"}]'`],
  ['echo ack', /'43456\[1,"2",\{"3":\[false\]\}\]'/g,
    `'43456[{"success":false,"error":{"code":"bad_request","message":"unknown event \\'message-with-ack\\'"}}]'`],
  ['binary echo', /const packets = await waitForPackets\(socket, 3\);\s*expect\(packets\[0\]\)\.to\.eql\(\s*'452-\["message-back"[^;]*;\s*expect\(packets\[1\]\)[^;]*;\s*expect\(packets\[2\]\)[^;]*;/g,
    `const packets = await waitForPackets(socket, 1);
      expect(packets[0]).to.eql('42["error",{"code":"bad_request","message":"binary payloads are not supported","event":""}]');`],
  ['binary ack', /const packets = await waitForPackets\(socket, 3\);\s*expect\(packets\[0\]\)\.to\.eql\(\s*'462-789[^;]*;\s*expect\(packets\[1\]\)[^;]*;\s*expect\(packets\[2\]\)[^;]*;/g,
    `const packets = await waitForPackets(socket, 1);
      expect(packets[0]).to.eql('43789[{"success":false,"error":{"code":"bad_request","message":"binary payloads are not supported"}}]');`],
];

let out = source;
for (const [name, pattern, replacement] of adaptations) {
  const before = out;
  out = out.replace(pattern, replacement);
  if (out === before) throw new Error(`adaptation '${name}' matched nothing: the suite changed`);
}
writeFileSync(join(dir, 'test-suite.switchboard.js'), out);
console.log(`adapted: ${adaptations.map(([n]) => n).join(', ')}`);
