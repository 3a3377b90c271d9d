ALTER TABLE jobs ADD COLUMN executor_ref TEXT;
