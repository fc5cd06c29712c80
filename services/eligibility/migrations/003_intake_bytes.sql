-- The intake also kept as the serialized protobuf message: parsing it back is much faster
-- than parsing JSON on every assessment. The JSON copy stays for people and SQL.
ALTER TABLE survivors ADD COLUMN intake_pb bytea;
ALTER TABLE assessments ADD COLUMN intake_pb bytea;
