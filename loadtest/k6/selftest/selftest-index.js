// The library, plus what only the self-test needs.
export * from '../lib/index.js';
export { ChatUser as ChatUserForTest } from '../lib/chat.js';
