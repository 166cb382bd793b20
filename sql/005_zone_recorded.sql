-- The zone the stored times were converted with (SOURCE_TIMEZONE). ULTIMA_MODIFICACION and
-- the view's other datetimes are naive local times; datos_vista stores them as timestamptz,
-- converted with SOURCE_TIMEZONE. Changing the setting later would make every stored time
-- differ from what a new conversion gives, so the first daemon to start records the zone
-- here, the daemons refuse another one, and `facusync convert-timezone` moves the stored
-- times from one zone to the other.
ALTER TABLE sync_control ADD COLUMN source_timezone text;
