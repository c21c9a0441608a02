// The metrics the library records and the scenarios put thresholds on. Created once, in the
// init context (k6 requires it), and shared by every scenario that imports them.
import { Counter, Rate, Trend } from 'k6/metrics';

// Socket.IO / Phoenix sessions
export const connectOk = new Rate('sb_connect_ok'); // handshake + auth succeeded
export const connects = new Counter('sb_connects'); // successful connects: a rate with no
// samples passes any k6 threshold, so every scenario also asks for a minimum count
export const connectTime = new Trend('sb_connect_ms', true); // ws open → namespace CONNECT (40) / socket open
export const joinTime = new Trend('sb_join_ms', true); // join emitted → ack
export const joinOk = new Rate('sb_join_ok');
export const joins = new Counter('sb_joins'); // successful joins
export const disconnects = new Counter('sb_unexpected_disconnects');
export const reconnects = new Counter('sb_reconnects');
export const unreadable = new Counter('sb_unreadable_frames'); // frames the client could not parse

// Deliveries (fan-out, REST → user, chat)
export const deliveryLatency = new Trend('sb_delivery_ms', true); // payload timestamp → receipt
export const deliveriesExpected = new Counter('sb_deliveries_expected');
export const deliveriesReceived = new Counter('sb_deliveries_received');
export const deliveriesLost = new Counter('sb_deliveries_lost');
export const deliveredAll = new Rate('sb_delivered'); // one sample per expected delivery
export const duplicates = new Counter('sb_duplicates');

// Chat
export const ackLatency = new Trend('sb_send_ack_ms', true); // message:send → ack
export const ackOk = new Rate('sb_send_ok');
export const acks = new Counter('sb_send_acks'); // sends acknowledged with success
export const seqGaps = new Counter('sb_seq_gaps'); // seqs skipped on a connection
export const seqChecked = new Counter('sb_seq_checked'); // messages whose seq was checked
export const typingReceived = new Counter('sb_typing_received');
export const receiptsReceived = new Counter('sb_read_receipts_received');

// REST
export const restOk = new Rate('sb_rest_ok');
export const restLatency = new Trend('sb_rest_ms', true);
export const restCalls = new Counter('sb_rest_calls_ok');
