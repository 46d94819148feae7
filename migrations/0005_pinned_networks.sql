-- limner schema v5: a character pins LoRAs and embeddings, so every portrait and regeneration
-- of it is painted with them. Both are JSON arrays (`[{"name", "weight"}]`, `["name"]`);
-- existing characters pin nothing.
ALTER TABLE characters ADD COLUMN loras TEXT NOT NULL DEFAULT '[]';
ALTER TABLE characters ADD COLUMN embeddings TEXT NOT NULL DEFAULT '[]';
