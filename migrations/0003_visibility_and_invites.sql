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

-- Who plays in which campaign (owns at least one character taking part), kept by triggers on
-- every write path, so "campaigns I play in" is an index range instead of a walk over all of
-- one's characters.
CREATE TABLE campaign_players (
    user_id     TEXT NOT NULL,
    campaign_id TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    characters  INTEGER NOT NULL,
    PRIMARY KEY (user_id, campaign_id)
) WITHOUT ROWID;
CREATE INDEX campaign_players_campaign ON campaign_players(campaign_id);
INSERT INTO campaign_players (user_id, campaign_id, characters)
    SELECT c.owner_id, cc.campaign_id, count(*) FROM campaign_characters cc
    JOIN characters c ON c.id = cc.character_id WHERE c.owner_id IS NOT NULL
    GROUP BY c.owner_id, cc.campaign_id;
CREATE TRIGGER campaign_players_join AFTER INSERT ON campaign_characters
WHEN (SELECT owner_id FROM characters WHERE id = NEW.character_id) IS NOT NULL
BEGIN
    INSERT INTO campaign_players (user_id, campaign_id, characters)
        SELECT owner_id, NEW.campaign_id, 1 FROM characters WHERE id = NEW.character_id
        ON CONFLICT (user_id, campaign_id) DO UPDATE SET characters = characters + 1;
END;
CREATE TRIGGER campaign_players_leave AFTER DELETE ON campaign_characters
BEGIN
    UPDATE campaign_players SET characters = characters - 1
        WHERE campaign_id = OLD.campaign_id
        AND user_id = (SELECT owner_id FROM characters WHERE id = OLD.character_id);
    DELETE FROM campaign_players WHERE campaign_id = OLD.campaign_id AND characters <= 0;
END;
CREATE TRIGGER campaign_players_character_gone BEFORE DELETE ON characters
BEGIN
    DELETE FROM campaign_characters WHERE character_id = OLD.id;
END;
CREATE TRIGGER campaign_players_owner AFTER UPDATE OF owner_id ON characters
WHEN OLD.owner_id IS NOT NEW.owner_id
BEGIN
    UPDATE campaign_players SET characters = characters - 1
        WHERE user_id = OLD.owner_id
        AND campaign_id IN (SELECT campaign_id FROM campaign_characters WHERE character_id = NEW.id);
    DELETE FROM campaign_players WHERE user_id = OLD.owner_id AND characters <= 0;
    INSERT INTO campaign_players (user_id, campaign_id, characters)
        SELECT NEW.owner_id, campaign_id, 1 FROM campaign_characters
        WHERE character_id = NEW.id AND NEW.owner_id IS NOT NULL
        ON CONFLICT (user_id, campaign_id) DO UPDATE SET characters = characters + 1;
END;

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
