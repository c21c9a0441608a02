-- Conversations, members, messages, receipts, read marks and reactions.
-- Portable SQL: the same file runs on SQLite and PostgreSQL. Times are Unix milliseconds.

CREATE TABLE conversations (
    id          TEXT PRIMARY KEY,
    title       TEXT,
    created_at  BIGINT NOT NULL,
    -- The seq of the newest message; bumped under the row lock by every append, so seqs are
    -- contiguous per conversation whatever the number of concurrent senders and nodes.
    last_seq    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    added_at        BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    sender_id       TEXT NOT NULL,
    content         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    attachments     TEXT NOT NULL,
    metadata        TEXT,
    client_ref      TEXT,
    sent_at         BIGINT NOT NULL,
    UNIQUE (conversation_id, seq)
);
-- Idempotency: one message per (conversation, sender, tempId/clientRandom).
CREATE UNIQUE INDEX messages_by_client_ref ON messages (conversation_id, sender_id, client_ref)
    WHERE client_ref IS NOT NULL;

CREATE TABLE receipts (
    message_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, status)
);

CREATE TABLE read_marks (
    conversation_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    read_seq        BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE TABLE reactions (
    message_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    reaction   TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, reaction)
);
