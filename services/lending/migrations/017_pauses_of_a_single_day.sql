-- A pause's end_date is its last day, counted inclusively as the arrears rule counts it
-- (daterange(start_date, end_date, '[]')): a pause of one day starts and ends on the same
-- day. The check asked for an end after the start, so the shortest pause was two days.
ALTER TABLE delinquency_pauses DROP CONSTRAINT delinquency_pauses_check;
ALTER TABLE delinquency_pauses ADD CONSTRAINT delinquency_pauses_dates
    CHECK (end_date >= start_date AND end_date <= start_date + 366);
