-- limner schema v3: indexes that let visibility, filters and keyset pagination run inside one
-- query (every list is ordered by name COLLATE NOCASE, then id), and campaign invitations.

-- Name order with the id as tie-breaker: an admin's page and a keyset cursor are index ranges.
DROP INDEX IF EXISTS characters_name;
CREATE INDEX characters_name_id ON characters(name COLLATE NOCASE, id);
-- Name and owner by id, so a user's visible set is filtered and sorted from the index alone.
CREATE INDEX characters_id_name_owner ON characters(id, name COLLATE NOCASE, owner_id);
-- A user's own characters, already in list order.
DROP INDEX IF EXISTS characters_owner;
CREATE INDEX characters_owner_name ON characters(owner_id, name COLLATE NOCASE, id);
-- The campaigns a character takes part in, without touching the table.
DROP INDEX IF EXISTS campaign_characters_character;
CREATE INDEX campaign_characters_character ON campaign_characters(character_id, campaign_id);
CREATE INDEX campaigns_name_id ON campaigns(name COLLATE NOCASE, id);
DROP INDEX IF EXISTS campaigns_dm;
CREATE INDEX campaigns_dm_name ON campaigns(dm_id, name COLLATE NOCASE, id);

-- Invitations: the DM's consent, handed out in advance. The code is the secret; it is shown to
-- the DM again when listing, so it is kept as is (it expires, and revoking deletes the row).
CREATE TABLE campaign_invites (
    code        TEXT PRIMARY KEY NOT NULL,
    campaign_id TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    created_by  TEXT,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    max_uses    INTEGER CHECK (max_uses IS NULL OR max_uses > 0),
    uses        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX campaign_invites_campaign ON campaign_invites(campaign_id, created_at);
