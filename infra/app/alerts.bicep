// Alert when a message reaches the poison queue.
//
// Why a log alert and not a metric alert: Azure Storage queue metrics (QueueMessageCount) are
// per account, without a queue-name dimension, and are emitted about hourly, so a metric alert
// cannot tell the poison queue from the busy events queue. The Functions host writes one warning
// per poisoned message ("Message has reached MaxDequeueCount of N. Moving message to queue
// '<queue>-poison'.") to Application Insights; this rule fires on any such trace within the
// evaluation window. It depends on host logs reaching Application Insights at Warning or lower
// (host.json logging must not raise the Host.* log level above Warning).

param name string
param location string
param tags object = {}

@description('Resource id of the Application Insights component the host logs to.')
param applicationInsightsId string

@description('Name of the poison queue (shared.config.POISON_QUEUE).')
param poisonQueueName string

@description('Optional e-mail address that receives the alert. Empty: the alert shows in Azure Monitor only.')
param alertEmailAddress string = ''

param actionGroupName string

// `contains` with the quotes: the exact queue name, case-insensitive. The second clause catches the
// permanent failures (404, 403, unreadable message) that the archive function parks itself, at once,
// with the log line "... moved to poison ..." (shared/pipeline.py).
var poisonQuery = 'traces | where (message has "MaxDequeueCount" and message contains "\'${poisonQueueName}\'") or message has "moved to poison"'

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmailAddress)) {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'altinnpoison'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

resource poisonAlert 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    displayName: 'Altinn event moved to ${poisonQueueName}'
    description: 'An Altinn event failed maxDequeueCount times and was moved to the poison queue. Inspect the failures in Application Insights, fix the cause, then replay the poison queue with the operations CLI.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: poisonQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: empty(alertEmailAddress) ? [] : [
        resourceId('Microsoft.Insights/actionGroups', actionGroupName)
      ]
    }
  }
  dependsOn: [
    actionGroup
  ]
}

output poisonAlertId string = poisonAlert.id
