-- Console sign-ins, shared by every gateway replica (a browser's next request may reach
-- another one). The cookie's value is not stored, only its SHA-256; nor is the admin token, only
-- its SHA-256, which says what the session may see: a token removed from the configuration ends
-- its sessions at once.
CREATE TABLE console_sessions (
    id_hash    bytea PRIMARY KEY,
    token_hash bytea NOT NULL,
    csrf       text NOT NULL,
    expires_at timestamptz NOT NULL
);
